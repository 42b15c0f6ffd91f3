"""Every pass: each module here registers one with `@register("<name>", ...)` on import.

Adding a pass is one file, stages/passes/<name>.py (options model + function), plus its test
tests/passes/test_<name>.py: modules are found here by name, so no list needs editing.
Modules whose name starts with "_" are shared helpers, not passes.
"""

import importlib
import pkgutil

PASS_MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))

for _name in PASS_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
