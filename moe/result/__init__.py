"""The Result record, its JSON, and Chrome/Perfetto trace output."""

from moe.result.record import Breakdown, Result, write_json_atomic, write_text_atomic
from moe.result.trace import Sample, Span, Trace, chrome_trace, write_trace

__all__ = ["Breakdown", "Result", "Sample", "Span", "Trace", "chrome_trace", "write_json_atomic",
           "write_text_atomic", "write_trace"]
