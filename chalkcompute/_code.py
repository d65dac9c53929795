"""How a function's code travels to the worker: as source, never as bytecode.

Bytecode and pickles tie the worker to the caller's exact Python version, so
at deploy time the function's globals are resolved into one synthesized
module of plain source:

- the module's own functions and classes it uses (and what *they* use:
  helpers, exception types, dataclasses, enums) travel as their source;
- other remote functions become handles bound by name (``remote_refs``);
- installed modules (stdlib, site-packages) and names from them become imports;
- modules of the user's project travel as ``.py`` files (``files``) and are
  imported like installed ones;
- plain constants (None, numbers, str, bytes and containers of them) travel as
  values;
- anything else (locks, open files, arbitrary instances) is a
  :class:`FunctionCodeError` that names it.

The caller's module is never imported in the worker, so its top-level
statements (a script's ``print``, a notebook's setup) never run there::

    import math
    SCALE = 2

    def area(r: float) -> float:
        return math.pi * r * r * SCALE

    bundle = build_bundle(area, remote_name=lambda obj: None)
    print(bundle.module_source)  # import math / SCALE = 2 / def area(...): ...
    # ... the bundle (four plain, JSON-friendly fields) travels to the worker ...
    fn = load_bundle(bundle, "/tmp/chalk-code", make_remote=lambda name: ...)
    fn(1.0)  # 6.283...
"""

from __future__ import annotations
import __future__

import ast
import builtins
import collections.abc
import dis
import enum
import functools
import hashlib
import heapq
import importlib.machinery
import importlib.util
import inspect
import math
import os
import site
import sys
import sysconfig
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .exceptions import FunctionCodeError

__all__ = ["CodeBundleData", "check_function", "build_bundle", "load_bundle", "caller_module"]

_HINT = "make it a constant, import it inside the function, or create it inside the function"
# Every module has these; the worker's module supplies its own values.
_MODULE_DUNDERS = frozenset({"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__",
                             "__builtins__", "__cached__", "__path__", "__annotations__", "__class__"})
_LOAD_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
# The SDK is in every worker image, even when the caller runs it from a checkout.
_SDK_PACKAGES = frozenset({"chalkcompute", "chalkd"})
_MISSING = object()
RemoteName = Callable[[object], "str | None"]


@dataclass(frozen=True)
class CodeBundleData:
    """Everything the worker needs to rebuild the function; plain data, JSON-friendly."""

    module_source: str
    function_name: str  # name of the function within module_source
    files: dict[str, str]  # relative path -> source, for project modules
    remote_refs: dict[str, str]  # global name -> remote function name
    module: str = ""  # the caller's module (fn.__module__): what shipped classes are reported as


def check_function(fn: Callable, *, remote_name: RemoteName) -> None:
    """Decoration-time check: the module may still be executing, so names it
    has not defined yet are skipped; everything bound now must be able to travel."""
    _Analyzer(fn, remote_name, strict=False).run()


def build_bundle(fn: Callable, *, remote_name: RemoteName) -> CodeBundleData:
    """Deploy-time: resolve every global ``fn`` uses (transitively) into a bundle."""
    return _Analyzer(fn, remote_name, strict=True).run()


def load_bundle(bundle: CodeBundleData, dest: str | os.PathLike, *,
                make_remote: Callable[[str], object]) -> Callable:
    """Worker side: write the files, exec the synthesized module, return the function."""
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for rel, source in bundle.files.items():
        parts = PurePosixPath(rel).parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise FunctionCodeError(f"bundle file path {rel!r} escapes the code directory")
        path = root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    digest = hashlib.sha256(f"{bundle.function_name}\0{bundle.module_source}".encode()).hexdigest()
    name = f"__chalk_fn__{digest[:12]}"
    # A real file gives tracebacks their source lines and lets child processes import it.
    file = root / f"{name}.py"
    file.write_text(bundle.module_source, encoding="utf-8")
    if sys.path[:1] != [str(root)]:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None  # a .py file always has one
    module = importlib.util.module_from_spec(spec)
    # Bound before exec: module-level code (decorators, defaults) may already use them.
    for global_name, remote in bundle.remote_refs.items():
        module.__dict__[global_name] = make_remote(remote)
    # Registered first, as imports are: dataclasses, pickle and get_type_hints look here.
    sys.modules[name] = module
    try:
        exec(compile(bundle.module_source, str(file), "exec", dont_inherit=True), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if bundle.module:
        _SHIPPED_AS[name] = bundle.module
    fn = module.__dict__.get(bundle.function_name)
    if not callable(fn):
        raise FunctionCodeError(f"bundle does not define function {bundle.function_name!r}")
    return fn


# Synthesized module name -> the caller's module name, for every bundle loaded here.
_SHIPPED_AS: dict[str, str] = {}


def caller_module(name: str) -> str:
    """The module name the caller knows for ``name``: a bundle's synthesized module
    (``__chalk_fn__<hash>``) maps back to the caller's (``__main__``, ``app.jobs``), so an
    exception class defined in the caller's script is reported, and matched by
    ``retry_on``, under the name the caller wrote; any other name is returned as is.

    Example::

        fn = load_bundle(bundle, "/tmp/chalk-code", make_remote=...)  # bundle.module == "__main__"
        caller_module(type(exc).__module__)  # '__main__' for a class shipped in the bundle
    """
    return _SHIPPED_AS.get(name, name)


# --- where a module lives -------------------------------------------------------------


@functools.cache
def _installed_dirs() -> tuple[str, ...]:
    # The stdlib and site dirs, not whole prefixes: with a system Python (prefix
    # /usr) a project in /usr/src/app must still count as the user's own.
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.update(getattr(site, "getsitepackages", list)())
    dirs.add(site.getusersitepackages())
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        dirs.update(os.path.join(prefix, lib) for lib in ("lib", "Lib", "lib64"))
    return tuple(os.path.realpath(d) + os.sep for d in dirs if d)


def _is_installed_file(file: str) -> bool:
    real = os.path.realpath(file)
    if {"site-packages", "dist-packages"} & set(Path(real).parts):
        return True
    return real.startswith(_installed_dirs())


def _is_installed(name: str, file: str | None, search: list[str] | None) -> bool:
    if name.partition(".")[0] in _SDK_PACKAGES:
        return True
    if file:
        return _is_installed_file(file)
    if name in sys.builtin_module_names or name.partition(".")[0] in sys.stdlib_module_names:
        return True
    # No file: frozen, or a namespace package, which is the project's if any dir is.
    return all(_is_installed_file(p) for p in search or ())


def _locate(name: str) -> tuple[str | None, list[str] | None] | None:
    """(file, package search dirs) of module ``name`` without running it; None if absent."""
    mod = sys.modules.get(name)
    if mod is not None:
        search = getattr(mod, "__path__", None)
        return getattr(mod, "__file__", None), list(search) if search is not None else None
    parent, _, last = name.rpartition(".")
    try:
        if parent:  # find_spec("a.b") would import a: look in a's dirs instead
            found = _locate(parent)
            if found is None or found[1] is None:
                return None
            spec = importlib.machinery.PathFinder.find_spec(last, found[1])
        else:
            spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    search = spec.submodule_search_locations
    return (spec.origin if spec.has_location else None), list(search) if search is not None else None


def _relative_path(name: str, file: str) -> tuple[Path, str]:
    """(sys.path entry, path below it) under which ``import name`` finds ``file``."""
    path = Path(os.path.abspath(file))
    parts = name.split(".")
    is_pkg = path.stem == "__init__"
    depth = len(parts) if is_pkg else len(parts) - 1
    expected = (*parts, "__init__") if is_pkg else tuple(parts)
    if depth >= len(path.parents) or path.relative_to(path.parents[depth]).with_suffix("").parts != expected:
        raise FunctionCodeError(f"module {name!r} ({file}) is not importable by its name")
    root = path.parents[depth]
    return root, path.relative_to(root).as_posix()


def _imported_modules(source: str, name: str, is_pkg: bool) -> list[str]:
    """Every module an ``import`` statement in ``source`` may name (some are attributes)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    package = name if is_pkg else name.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".") if package else []
                if node.level - 1 > len(pkg):
                    continue
                base = ".".join([*pkg[: len(pkg) - node.level + 1], *([base] if base else [])])
            if base:
                out.append(base)
                out.extend(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return out


# --- what a piece of source uses ------------------------------------------------------


def _code_names(code: types.CodeType) -> tuple[set[str], set[str], set[str]]:
    """(names loaded while defining, names loaded when called, globals assigned)."""
    deftime, runtime, assigned, todo = set(), set(), set(), [code]
    while todo:  # nested functions, comprehensions, lambdas and class bodies too
        co = todo.pop()
        loads, stores = set(), set()
        for ins in dis.get_instructions(co):
            if ins.opname in _LOAD_OPS:
                loads.add(ins.argval)
            elif ins.opname in ("STORE_NAME", "DELETE_NAME"):
                stores.add(ins.argval)
            elif ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                assigned.add(ins.argval)
        if co.co_flags & inspect.CO_OPTIMIZED:
            runtime |= loads
        else:  # module or class body: runs at definition; its own assignments are local
            deftime |= loads - stores
        todo.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    return deftime, runtime - deftime, assigned


def _ast_facts(tree: ast.AST) -> tuple[set[str], set[tuple[str, tuple[str, ...]]]]:
    """Names in annotations (string ones too: ``from __future__ import annotations``), and
    attribute chains ``a.b.c`` as ("a", ("b", "c")): a submodule used so must be imported."""
    names: set[str] = set()
    chains: set[tuple[str, tuple[str, ...]]] = set()

    def add(expr: ast.AST | None) -> None:
        for node in ast.walk(expr) if expr is not None else ():
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    add(ast.parse(node.value, mode="eval"))
                except SyntaxError:
                    pass

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                add(arg.annotation if arg is not None else None)
            add(node.returns)
        elif isinstance(node, ast.AnnAssign):
            add(node.annotation)
        elif isinstance(node, ast.Attribute):
            attrs = []
            while isinstance(node, ast.Attribute):
                attrs.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name):
                chains.add((node.id, tuple(reversed(attrs))))
    return names, chains


def _literal_source(value: object, depth: int = 0) -> str | None:
    """Source that rebuilds a plain constant exactly, or None if it is not one."""
    t = type(value)  # exact types: subclasses (IntEnum, NamedTuple) would not round-trip
    if value is None or t in (bool, str, bytes):
        return repr(value)
    if t is int:  # hex() when repr() refuses (over sys.get_int_max_str_digits)
        return repr(value) if value.bit_length() < 13000 else hex(value)  # type: ignore[attr-defined, arg-type]  # an int (t is int)
    if t in (float, complex):
        finite = all(map(math.isfinite, (value.real, value.imag)))  # type: ignore[attr-defined]  # a complex
        return repr(value) if finite else f"{t.__name__}({repr(value)!r})"
    if t not in (tuple, list, set, frozenset, dict) or depth > 100:
        return None
    pairs = value.items() if t is dict else ((v, _MISSING) for v in value)  # type: ignore[attr-defined]  # a container (t checked above)
    items = []
    for k, v in pairs:
        k_src, v_src = _literal_source(k, depth + 1), v is _MISSING or _literal_source(v, depth + 1)
        if k_src is None or v_src is None:
            return None
        items.append(k_src if v is _MISSING else f"{k_src}: {v_src}")
    if t in (set, frozenset):
        items.sort()  # the same text whatever the hash seed: same content, same version
    body = ", ".join(items) + ("," if t is tuple and len(items) == 1 else "")
    if t in (tuple, list):
        return f"({body})" if t is tuple else f"[{body}]"
    if t is frozenset:
        return f"frozenset({{{body}}})" if items else "frozenset()"
    return f"{{{body}}}" if items or t is dict else "set()"


def _type_alias_source(value: object) -> str | None:
    """``list[float]``, ``int | None``, ``typing.Optional[str]``: their repr rebuilds them."""
    if not isinstance(value, (types.GenericAlias, types.UnionType)) and type(value).__module__ != "typing":
        return None
    src = repr(value)
    try:
        same = eval(src, {"typing": typing, "collections": collections}) == value
    except Exception:
        return None
    return src if same else None


def _cell_value(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # not assigned yet
        return _MISSING


def _describe(value: object) -> str:
    if isinstance(value, types.FunctionType) and value.__name__ == "<lambda>":
        return "a lambda whose source cannot be found"
    t = type(value)
    return f"a {t.__qualname__}" if t.__module__ == "builtins" else f"a {t.__module__}.{t.__qualname__}"


# --- the analysis ---------------------------------------------------------------------


@dataclass
class _Item:
    text: str
    rank: int  # 0 import, 1 constant, 2 class, 3 function: the order when free
    order: int  # source line or insertion order
    deps: frozenset[str] = frozenset()  # names needed while defining it


class _Analyzer:
    def __init__(self, fn: Callable, remote_name: RemoteName, strict: bool) -> None:
        # A class travels whole too (chalkcompute.cls: every method's replica rebuilds it).
        is_class = isinstance(fn, type)
        if not is_class and (not isinstance(fn, types.FunctionType) or fn.__name__ == "<lambda>"):
            raise FunctionCodeError(f"{fn!r} is not a function defined with def; its code cannot travel")
        self.fn, self.name, self.remote_name, self.strict = fn, fn.__name__, remote_name, strict
        self.module = fn.__module__
        globals_ = vars(sys.modules[fn.__module__]) if is_class and fn.__module__ in sys.modules \
            else getattr(fn, "__globals__", {})
        self.future = globals_.get("annotations") is __future__.annotations
        self.items: dict[str, _Item] = {}  # binding name (or "import x.y") -> its code
        self.bound: dict[str, object] = {}  # name in the synthesized module -> what it stands for
        self.remote_refs: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.shipped: dict[int, str] = {}  # id(object shipped as source) -> name defined
        self.missing: dict[str, str] = {}  # undefined name -> who uses it
        self.assigned: set[str] = set()  # globals the shipped code itself assigns
        self.chains: set[tuple[str, tuple[str, ...]]] = set()
        self.roots: set[Path] = {self._own_root()}
        self.modules_done: set[str] = set()
        self.keep: list[object] = []  # keeps ids in `shipped` unique

    def run(self) -> CodeBundleData:
        function_name = self._ship(self.fn, self.name, top=True)
        self._import_submodules()
        missing = {n: via for n, via in self.missing.items() if n not in self.assigned | self.bound.keys()}
        if self.strict and missing:
            name, via = sorted(missing.items())[0]
            raise FunctionCodeError(
                f"function {self.name!r} uses name {name!r}{self._through(via)} that is not defined "
                f"in its module (nor a builtin)")
        head = f"# Synthesized by chalkcompute: function {function_name!r} of module {self.module!r}.\n"
        if self.future:
            head += "from __future__ import annotations\n"
        body, prev = "", 0
        for it in self._ordered():  # two blank lines around definitions, as in any module
            body += ("\n\n" if 2 in (it.rank, prev) or 3 in (it.rank, prev) else "") + it.text
            prev = it.rank
        return CodeBundleData(head + body, function_name, dict(sorted(self.files.items())),
                              dict(sorted(self.remote_refs.items())), self.module)

    # state snapshots let a best-effort resolution (annotations, helper decorators) back out cleanly
    def _try(self, action: Callable[[], object]) -> bool:
        saved = {k: (v.copy() if isinstance(v, (dict, set, list)) else v) for k, v in vars(self).items()}
        try:
            action()
            return True
        except FunctionCodeError:
            vars(self).update(saved)
            return False

    def _own_root(self) -> Path:
        mod = sys.modules.get(self.module or "")
        file = getattr(mod, "__file__", None)
        if not file:  # notebook or REPL: the project is where it runs
            return Path.cwd()
        spec = getattr(mod, "__spec__", None)
        try:
            return _relative_path(spec.name if spec else self.module, file)[0]
        except FunctionCodeError:  # a script: its directory is sys.path[0]
            return Path(os.path.abspath(file)).parent

    def _through(self, via: str) -> str:
        return "" if via == self.name else f" (through {via!r})"

    def _bind(self, name: str, value: object) -> None:
        old = self.bound.get(name, _MISSING)
        if old is not _MISSING and old is not value:
            raise FunctionCodeError(
                f"function {self.name!r} cannot travel: the name {name!r} stands for two different "
                f"objects in the code it uses; rename one")
        self.bound[name] = value

    def _add(self, key: str, text: str, rank: int, deps: frozenset[str] = frozenset(), order: int = -1) -> None:
        if rank == 0:  # imports sorted by text, submodule loads after them
            order = int(text.startswith("__import__"))
        self.items[key] = _Item(text, rank, order if order >= 0 else len(self.items), deps)

    def _alias(self, name: str, defined: str, obj: object) -> str:
        if name != defined:  # `alias = helper` at module level: ship helper, then bind alias
            self._bind(name, obj)
            self._add(name, f"{name} = {defined}\n", 3, frozenset({defined}))
        return defined

    def _ship(self, obj: object, name: str, *, top: bool = False, via: str = "") -> str:
        """Ship ``obj`` (a function or class of the function's module) as source."""
        target = obj if isinstance(obj, type) else inspect.unwrap(obj)  # type: ignore[arg-type]  # a function
        if id(target) in self.shipped:
            return self._alias(name, self.shipped[id(target)], obj)
        is_class = isinstance(target, type)
        what = f"function {self.name!r}" if top else \
            f"{'class' if is_class else 'function'} {name!r} used by function {self.name!r}"
        try:
            raw_lines, line = inspect.getsourcelines(target)
            raw = "".join(raw_lines)
        except (OSError, TypeError) as e:
            why = ("classes made by a call (namedtuple(), type()) or typed in a notebook or REPL have no "
                   "class statement to ship; define it with one in a .py file" if is_class else
                   "code typed at an interactive prompt or made with exec() has no source file; define it "
                   "in a .py file or a notebook cell")
            raise FunctionCodeError(f"cannot get the source of {what} ({e}): {why}") from e
        text = textwrap.dedent(raw)
        try:
            tree = ast.parse(text)
            body = tree.body
        except SyntaxError:  # dedent stops at a column-0 string; `if True:` keeps it top-level
            text = "if True:\n" + raw
            try:
                tree = ast.parse(text)
            except SyntaxError as e:
                raise FunctionCodeError(f"cannot parse the source of {what}: {e}") from e
            body = tree.body[0].body  # type: ignore[attr-defined]  # a def or class statement
        node = body[0] if body else None
        if getattr(target, "__name__", "") == "<lambda>":
            # Only `name = lambda ...` has a source that defines just this lambda.
            if not (isinstance(node, ast.Assign) and len(body) == 1 and isinstance(node.value, ast.Lambda)
                    and [getattr(t, "id", None) for t in node.targets] == [name]):
                raise FunctionCodeError(
                    f"function {self.name!r} uses global {name!r}{self._through(via)} (a lambda whose "
                    f"source cannot be isolated) that cannot travel to the worker: define it with def")
            text, defined = f"{name} = {ast.get_source_segment(text, node.value)}\n", name
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined = node.name
        else:
            raise FunctionCodeError(f"cannot isolate the definition of {what} in its source")
        self.shipped[id(target)] = defined  # before recursing: helpers may use each other
        self.keep.append(target)
        self._bind(defined, self.fn if top else obj)
        self._alias(name, defined, obj)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lines = text.splitlines(keepends=True)
            for dec in node.decorator_list:
                # The function itself runs plain in the worker; a helper keeps a decorator
                # only when every name in it can travel (@dataclass, @functools.cache).
                names = sorted({n.id for n in ast.walk(dec) if isinstance(n, ast.Name)})
                ns = self._namespaces(obj)
                # _try calls the lambda at once, inside this iteration: ns and names are this loop's.
                if top or not self._try(lambda: [self._resolve(n, ns, defined, True, required=True)  # type: ignore[func-returns-value]  # noqa: B023
                                                 for n in names]):  # noqa: B023
                    lines[dec.lineno - 1: dec.end_lineno] = [""] * (dec.end_lineno - dec.lineno + 1)  # type: ignore[operator]  # a decorator has an end line
            text = "".join(lines)
        flags = __future__.annotations.compiler_flag if self.future else 0
        code = compile(text, f"<{defined}>", "exec", flags=flags, dont_inherit=True)
        deftime, runtime, assigned = _code_names(code)
        self.assigned |= assigned
        hinted, chains = _ast_facts(ast.parse(text))
        self.chains |= chains
        ns = self._namespaces(obj)
        for n in sorted(deftime | runtime):
            self._resolve(n, ns, defined, False)
        for n in sorted(hinted - deftime - runtime):
            # Hints only: best effort. _try calls the lambda at once, so n is this iteration's.
            self._try(lambda: self._resolve(n, ns, defined, True))  # noqa: B023
        self._add(defined, text if text.endswith("\n") else text + "\n", 2 if is_class else 3,
                  frozenset(deftime), line)
        return defined

    def _namespaces(self, obj: object) -> list[dict]:
        target = obj if isinstance(obj, type) else inspect.unwrap(obj)  # type: ignore[arg-type]  # a function
        if isinstance(target, types.FunctionType):
            # Free variables become globals of the synthesized module, so resolve them alike.
            cells = zip(target.__code__.co_freevars, target.__closure__ or (), strict=False)
            closure = {n: v for n, c in cells if (v := _cell_value(c)) is not _MISSING}
            return [closure, target.__globals__]
        return [vars(sys.modules[target.__module__]) if target.__module__ in sys.modules else {}]

    def _resolve(self, name: str, namespaces: list[dict], via: str, lenient: bool,
                 required: bool = False) -> None:
        if name in _MODULE_DUNDERS:
            return
        value = next((ns[name] for ns in namespaces if name in ns), _MISSING)
        if value is _MISSING:
            if name in self.bound or hasattr(builtins, name):
                return
            if required:
                raise FunctionCodeError(f"name {name!r} is not defined")
            if not lenient:
                self.missing.setdefault(name, via)
            return
        if name in self.bound:
            if self.bound[name] is value or name == self.name:
                return  # the function's own name: its def binds it (the global is its wrapper)
            self._bind(name, value)  # raises: one name, two objects
        self._resolve_value(name, value, via)

    def _resolve_value(self, name: str, value: object, via: str) -> None:
        remote = self.remote_name(value)
        if remote is not None:
            self._bind(name, value)
            self.remote_refs[name] = remote
            return
        if isinstance(value, types.ModuleType):
            return self._import_module(name, value, via)
        if isinstance(value, enum.Enum) and getattr(type(value), value.name, None) is value:
            cls = type(value)
            cls_name = self.shipped.get(id(cls)) or cls.__name__
            if self.bound.get(cls_name) is not cls:
                self._resolve(cls_name, [{cls_name: cls}], via, False)
            self._bind(name, value)
            return self._add(name, f"{name} = {cls_name}.{value.name}\n", 1, frozenset({cls_name}))  # type: ignore[union-attr]  # an enum member
        src = _literal_source(value)
        if src is None and not isinstance(value, type) and (src := _type_alias_source(value)) is not None:
            for mod in (typing, collections):
                if f"{mod.__name__}." in src and self.bound.get(mod.__name__) is not mod:
                    self._import_module(mod.__name__, mod, via)
            if "collections.abc." in src:
                self._add("import collections.abc", "__import__('collections.abc')\n", 0)
        if src is not None:
            self._bind(name, value)
            return self._add(name, f"{name} = {src}\n", 1)
        target = value if isinstance(value, type) else inspect.unwrap(value) if callable(value) else None
        if getattr(value, "__module__", None) == self.module and isinstance(target, (type, types.FunctionType)):
            self._ship(value, name, via=via)
            return
        if (isinstance(value, type) or hasattr(value, "__qualname__")) and self._import_object(name, value):
            return
        raise FunctionCodeError(
            f"function {self.name!r} uses global {name!r}{self._through(via)} ({_describe(value)}) "
            f"that cannot travel to the worker: {_HINT}")

    def _loaded_module(self, modname: str) -> types.ModuleType | None:
        mod = sys.modules.get(modname)
        if mod is None and (found := _locate(modname)) and _is_installed(modname, *found):
            try:  # installed code only: the project's modules are never run at deploy time
                mod = importlib.import_module(modname)
            except Exception:
                return None
        return mod

    def _import_object(self, name: str, value: object) -> bool:
        """``from mod import attr as name`` when that import yields this very object."""
        candidates = [getattr(value, "__module__", None)]
        owner = getattr(value, "__self__", None)
        if isinstance(owner, types.ModuleType):
            candidates.append(owner.__name__)
        for modname in candidates:
            if not isinstance(modname, str) or modname in ("__main__", self.module):
                continue
            mod = self._loaded_module(modname)
            if mod is None:
                continue
            attrs = [getattr(value, "__qualname__", None), getattr(value, "__name__", None)]
            attr = next((a for a in attrs if isinstance(a, str) and getattr(mod, a, None) is value), None)
            attr = attr or next((k for k, v in vars(mod).items() if v is value), None)
            if attr is None:
                continue
            self._bind(name, value)
            self._add_project_module(modname, direct=True)
            self._add(name, f"from {modname} import {attr}" + (f" as {name}\n" if attr != name else "\n"), 0)
            return True
        return False

    def _import_module(self, name: str, mod: types.ModuleType, via: str) -> None:
        modname = mod.__name__
        if modname in ("__main__", self.module) or sys.modules.get(modname) is not mod:
            raise FunctionCodeError(
                f"function {self.name!r} uses global {name!r}{self._through(via)} (module {modname!r}) "
                f"that cannot travel to the worker: only modules importable by name can")
        self._bind(name, mod)
        self._add_project_module(modname, direct=True)
        text = f"import {modname}\n" if name == modname else f"import {modname} as {name}\n"
        self._add(name, text, 0)

    def _add_project_module(self, modname: str, direct: bool) -> None:
        """Ship the module's file (and its packages' and imports') if it is the project's."""
        if modname in self.modules_done or modname == "__main__":
            return
        found = _locate(modname)
        if found is None or _is_installed(modname, *found):
            return
        file = found[0]
        if file is not None and not file.endswith(".py"):
            raise FunctionCodeError(
                f"project module {modname!r} ({file}) is compiled; only .py source can travel")
        if file is not None:
            root, rel = _relative_path(modname, file)
            path = Path(os.path.abspath(file))
            if not direct and not any(r in path.parents for r in self.roots):
                return  # found through an import but outside the project: not ours to ship
            if direct:
                self.roots.add(root)
        self.modules_done.add(modname)
        if "." in modname:  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            self._add_project_module(modname.rpartition(".")[0], direct)
        if file is None:  # namespace package: nothing to ship but its children
            return
        with open(file, encoding="utf-8") as fh:
            self.files[rel] = source = fh.read()
        for dep in _imported_modules(source, modname, rel.endswith("__init__.py")):
            self._add_project_module(dep, direct=False)

    def _import_submodules(self) -> None:
        """``import xml.etree.ElementTree`` binds ``xml``; the worker must load the rest too."""
        wanted: set[str] = set()
        for root, attrs in self.chains:
            mod, current = self.bound.get(root), self.bound.get(root)
            for i, attr in enumerate(attrs if isinstance(mod, types.ModuleType) else ()):
                current = getattr(current, attr, None)
                full = ".".join((mod.__name__, *attrs[: i + 1]))  # type: ignore[attr-defined]  # a module (checked two lines up)
                if not isinstance(current, types.ModuleType) or current.__name__ != full:
                    break  # os.path is posixpath, already imported by os itself
                wanted.add(full)
        for full in sorted(wanted):
            if not any(w.startswith(full + ".") for w in wanted):  # the deepest imports its parents
                self._add_project_module(full, direct=True)
                self._add(f"import {full}", f"__import__({full!r})\n", 0)

    def _ordered(self) -> list[_Item]:
        """Definitions before their definition-time uses (bases before subclasses); otherwise
        imports, constants, classes, functions, each in source order."""
        deps = {k: {d for d in it.deps if d in self.items and d != k} for k, it in self.items.items()}
        key = {k: (it.rank, it.order, it.text, k) for k, it in self.items.items()}
        ready = [key[k] for k, ds in deps.items() if not ds]
        heapq.heapify(ready)
        out: list[str] = []
        while ready:
            out.append(done := heapq.heappop(ready)[-1])
            for k, ds in deps.items():
                if done in ds:
                    ds.discard(done)
                    if not ds:
                        heapq.heappush(ready, key[k])
        # A cycle could not have run in the original module either; keep the rest in plain order.
        out += sorted(set(self.items) - set(out), key=key.__getitem__)
        return [self.items[k] for k in out]
