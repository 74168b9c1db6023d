#!/bin/bash
# one rank pinned to its share of the cores: LOCAL_RANK's block of NPROC / LOCAL_WORLD_SIZE cores
n=$(nproc --all); per=$((n / LOCAL_WORLD_SIZE)); lo=$((LOCAL_RANK * per)); hi=$((lo + per - 1))
exec taskset -c $lo-$hi python3 "$@"
