"""What every importer yields: one X-ray file as found, with the boxes its source gives it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path


class SourceFormatError(ValueError):
    """A source file or folder is not laid out as its format requires."""


@dataclass(frozen=True)
class SourceImage:
    path: Path
    split: str = "train"
    # (class name, [x1, y1, x2, y2] in the file's pixels); only meaningful when ``labelled``.
    boxes: list[tuple[str, list[float]]] = field(default_factory=list)
    # False for images with no labels at all (a plain folder), True for a labelled image, even one
    # without boxes (a negative X-ray).
    labelled: bool = True


@dataclass(frozen=True)
class ClassMapping:
    """How a source's class names become the dataset's: some renamed (several sources mark one
    finding under many names: Roboflow fracture sets use ``angle``, ``line``, ``messed_up_angle``
    for the fracture site), or every class onto one."""

    renames: dict[str, str] = field(default_factory=dict)
    single_class: str | None = None

    @classmethod
    def parse(cls, rules: Sequence[str] = (), single_class: str | None = None) -> ClassMapping:
        """From rules such as ``"angle,line,messed_up_angle=fracture"`` (one target per rule)."""
        renames: dict[str, str] = {}
        for rule in rules:
            names, equals, target = rule.partition("=")
            sources, target = [name.strip() for name in names.split(",") if name.strip()], target.strip()
            if not equals or not sources or not target:
                raise SourceFormatError(
                    f"class mapping {rule!r} is not of the form 'a,b,c=target' (e.g. angle,line=fracture)"
                )
            for name in sources:
                if renames.get(name, target) != target:
                    raise SourceFormatError(f"class {name!r} is mapped to both {renames[name]!r} and {target!r}")
                renames[name] = target
        return cls(renames, single_class.strip() if single_class else None)

    def __call__(self, class_name: str) -> str:
        return self.single_class or self.renames.get(class_name, class_name)

    def apply(self, sources: Iterable[SourceImage]) -> Iterator[SourceImage]:
        for source in sources:
            yield replace(source, boxes=[(self(name), box) for name, box in source.boxes])
