"""What a weight import did: the one result type every key map returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoadReport:
    """Names are the source checkpoint's keys (`unexpected`) or fgjax variable paths
    joined with '/' (`missing`); `mismatched` holds `(name, source_shape, target_shape)`."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for name, src, dst in self.mismatched:
            lines.append(f"shape mismatch {name}: checkpoint {src} vs model {dst}")
        return "\n".join(lines)

    def raise_if_incomplete(self, source: str) -> None:
        """Strict loading: any missing, unexpected or mismatched tensor is an error."""
        if not self.ok:
            raise ValueError(f"incomplete weight import from {source}:\n{self}")
