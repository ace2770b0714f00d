"""The package's layering: no import circles, and nothing in the library imports the CLI."""

import ast
import pathlib
import subprocess
import sys

import ae_jax

ROOT = pathlib.Path(ae_jax.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """The ae_jax modules `name` imports anywhere in its file (delayed imports included);
  its own ancestor packages are left out (a package's __init__ runs before its modules)."""
  package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      names = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    found.update(n for n in names if n in modules and n != name)
  return {n for n in found if not name.startswith(n + ".")}


def _graph():
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_graph_sees_known_edges():
  graph = _graph()
  assert "ae_jax.configs.overrides" in graph["ae_jax.cli"]
  assert "ae_jax.configs.overrides" in graph["ae_jax.vmap_trials"]
  assert "ae_jax.fit" in graph["ae_jax.cli"]  # a delayed import counts too


def test_no_library_module_imports_the_cli():
  graph = _graph()
  importers = sorted(m for m, deps in graph.items() if "ae_jax.cli" in deps)
  assert importers == [], f"library modules import ae_jax.cli: {importers}"


def test_no_import_cycles():
  graph = _graph()

  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      for nxt in graph[todo.pop()]:
        if nxt not in seen:
          seen.add(nxt)
          todo.append(nxt)
    return seen

  cycles = {m: sorted(d for d in deps if m in reachable(d)) for m, deps in graph.items()}
  cycles = {m: d for m, d in cycles.items() if d}
  assert not cycles, f"import cycles (module: imports that lead back to it): {cycles}"


def test_importing_every_module_leaves_the_cli_unloaded():
  names = sorted(n for n in _modules() if n not in ("ae_jax.cli", "ae_jax.__main__"))
  code = ("import importlib, sys\n"
          f"for n in {names!r}:\n"
          "  importlib.import_module(n)\n"
          "print('ae_jax.cli' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT.parent, check=True)
  assert out.stdout.strip().splitlines()[-1] == "False"
