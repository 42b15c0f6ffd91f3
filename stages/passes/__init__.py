"""Every pass, imported by name so the full list reads in one place.

Adding a pass: write stages/passes/<name>.py (options model + function decorated with
`@register("<name>", ...)`), add its import below, and tests/passes/test_<name>.py.
"""

from . import (  # noqa: F401 - imported for registration
    convert_opset,
    fix_output_shape,
    lift_constants,
    ort_optimize,
    prune_charset,
    quantize_dynamic,
    quantize_static,
    quantize_to_tolerance,
    simplify,
    to_fp16,
)
