"""The dataset adapters by name: what `build_examples --dataset` and the SequenceExampleGen
component offer.

An adapter is one `register(Adapter(...))` call in a module of this package (modules here are
imported on first use, so a new file is the only change): its name, its BuildOptions defaults,
its input flags (with help), how the flag values become its inputs record, its `read`, and
how the component finds its inputs under a data root.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

INPUTS_GROUP = "inputs"  # the --help section of the input flags
# BuildOptions fields an adapter may default: their flags have no fixed default.
DEFAULTABLE_OPTIONS = ("split", "clicks_per_session")


class MissingInputs(ValueError):
    """The adapter's inputs are not given, e.g. "--dataset kuaisar needs --input_dir"."""


@dataclasses.dataclass(frozen=True)
class InputFlag:
    """A `build_examples` flag an adapter reads (as `--<name>`)."""

    name: str
    help: Optional[str] = None
    type: Callable = str
    default: Any = None
    nargs: Optional[str] = None
    group: str = INPUTS_GROUP
    # The component sets it from its data_root parameter (not a build option there).
    from_data_root: bool = False
    # A path build option of the component: relative to data_root unless absolute.
    path: bool = False

    def add_to(self, group) -> None:
        kwargs = {"type": self.type, "default": self.default, "help": self.help}
        if self.nargs:
            kwargs["nargs"] = self.nargs
        group.add_argument(f"--{self.name}", **kwargs)


def _no_inputs_from_root(data_root: str) -> Dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Adapter:
    name: str
    # (beam pipeline, inputs record) -> common.AdapterOutput
    read: Callable
    # parsed flag values (every build_examples flag by name) -> the inputs record;
    # MissingInputs when a required input is not given
    inputs: Callable[[Mapping[str, Any]], Any]
    flags: Tuple[InputFlag, ...] = ()
    # BuildOptions fields (DEFAULTABLE_OPTIONS) this dataset sets when no flag does
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # data_root -> values of its from_data_root flags, for the SequenceExampleGen component
    locate: Callable[[str], Dict[str, Any]] = _no_inputs_from_root

    def __post_init__(self):
        unknown = sorted(set(self.defaults) - set(DEFAULTABLE_OPTIONS))
        if unknown:
            raise ValueError(
                f"adapter {self.name!r}: defaults {unknown} are not among {DEFAULTABLE_OPTIONS}"
            )


_REGISTRY: Dict[str, Adapter] = {}
_loaded = False


def register(adapter: Adapter) -> Adapter:
    """Adds an adapter; its flags must agree with any other adapter's flag of that name."""
    if adapter.name in _REGISTRY:
        raise ValueError(f"adapter {adapter.name!r} is already registered")
    known = {flag.name: flag for other in _REGISTRY.values() for flag in other.flags}
    for flag in adapter.flags:
        if flag.name in known and known[flag.name] != flag:
            raise ValueError(
                f"adapter {adapter.name!r}: flag --{flag.name} differs from another "
                "adapter's flag of that name"
            )
    _REGISTRY[adapter.name] = adapter
    return adapter


def unregister(name: str) -> None:
    """Removes an adapter (tests)."""
    del _REGISTRY[name]


def _load() -> None:
    """Imports every module of this package once, so their register() calls have run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = __name__.rsplit(".", 1)[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")


def adapters() -> Dict[str, Adapter]:
    """name -> Adapter, in registration order."""
    _load()
    return dict(_REGISTRY)


def get(name: str) -> Adapter:
    registered = adapters()
    if name not in registered:
        raise ValueError(f"unknown adapter {name!r}; expected one of {sorted(registered)}")
    return registered[name]


def input_flags() -> Tuple[InputFlag, ...]:
    """Every adapter's input flags, each name once, in registration order."""
    flags = {}
    for adapter in adapters().values():
        for flag in adapter.flags:
            flags.setdefault(flag.name, flag)
    return tuple(flags.values())


def data_root_flags() -> Tuple[str, ...]:
    """Input flags the SequenceExampleGen component sets from its data_root."""
    return tuple(flag.name for flag in input_flags() if flag.from_data_root)


def path_flags() -> Tuple[str, ...]:
    """Input flags that are paths, relative to the component's data_root unless absolute."""
    return tuple(flag.name for flag in input_flags() if flag.path)
