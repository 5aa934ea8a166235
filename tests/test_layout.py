"""The package layering: lower layers never import higher ones; platform code stays in backend."""

import ast
import pathlib
import re

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "msrnn_jax"

# What each subpackage may import from msrnn_jax (besides itself).
ALLOWED = {
    "backend": set(),
    "model": {"backend"},
    "data": set(),
    "evaluation": {"data"},
    "training": {"backend", "model", "data", "evaluation"},
    "analysis": {"backend", "model", "training.step"},
}


def _module(base: str, name: str) -> str:
  """``from msrnn_jax.<base> import <name>``: the module it reads (name, if a module)."""
  dotted = f"{base}.{name}" if base else name
  path = PKG / dotted.replace(".", "/")
  return dotted if path.is_dir() or path.with_suffix(".py").exists() else base


def _imports(path: pathlib.Path) -> set[str]:
  """Modules of msrnn_jax that ``path`` imports, as dotted names below msrnn_jax."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("msrnn_jax"):
      base = node.module.removeprefix("msrnn_jax").lstrip(".")
      found.update(_module(base, alias.name) for alias in node.names)
    elif isinstance(node, ast.Import):
      found.update(a.name.removeprefix("msrnn_jax.") for a in node.names
                   if a.name.startswith("msrnn_jax."))
  return found


def test_lower_layers_never_import_higher_ones():
  bad = []
  for package, allowed in ALLOWED.items():
    for path in (PKG / package).rglob("*.py"):
      for module in _imports(path):
        top = module.split(".")[0]
        ok = top == package or top in allowed or any(
            module == a or module.startswith(a + ".") for a in allowed)
        if not ok:
          bad.append(f"{path.relative_to(PKG)} imports msrnn_jax.{module}")
  assert not bad, bad


def test_platform_machinery_stays_in_backend():
  """Only msrnn_jax/backend names the CPU kernel library or the C allocator."""
  pattern = re.compile(r"onednn|malloc|mallopt|glibc", re.IGNORECASE)
  offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
               if "backend" not in p.parts and pattern.search(p.read_text())]
  assert not offenders, offenders


def test_backend_public_names_and_modules_load_on_first_use():
  from msrnn_jax import backend
  assert [name for name in backend.__all__ if not hasattr(backend, name)] == []
  assert backend.onednn.__name__ == "msrnn_jax.backend.onednn"
  assert {"conv2d", "gates", "warp"} <= set(dir(backend))
  with pytest.raises(AttributeError, match="no attribute .no_such_name."):
    backend.no_such_name  # noqa: B018
