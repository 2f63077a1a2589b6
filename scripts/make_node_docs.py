#!/usr/bin/env python3
"""Write web/docs/<NodeName>.md (the node help pages) from the nodes' own descriptions and
tooltips, so help and UI can never disagree. Run from the repository root."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_pack():
    spec = importlib.util.spec_from_file_location("coral_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["coral_pack"] = module
    spec.loader.exec_module(module)
    return module


def page(name: str, cls: type, title: str) -> str:
    lines = [f"# {title}", "", cls.DESCRIPTION, ""]
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        items = spec.get(section, {})
        if not items:
            continue
        lines += [f"## {'Inputs' if section == 'required' else 'Optional inputs'}", ""]
        for inp, (kind, *opts) in items.items():
            kind_text = "choice" if isinstance(kind, list) else kind
            tip = opts[0].get("tooltip", "") if opts else ""
            default = opts[0].get("default") if opts else None
            extra = f" (default `{default}`)" if default not in (None, "") else ""
            lines.append(f"- **{inp}** ({kind_text}){extra}: {tip}")
        lines.append("")
    if cls.RETURN_TYPES:
        lines += ["## Outputs", ""]
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        tips = getattr(cls, "OUTPUT_TOOLTIPS", [""] * len(names))
        for n, t, tip in zip(names, cls.RETURN_TYPES, tips):
            lines.append(f"- **{n}** ({t}): {tip}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    pack = load_pack()
    out = ROOT / "web" / "docs"
    out.mkdir(parents=True, exist_ok=True)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        (out / f"{name}.md").write_text(page(name, cls, pack.NODE_DISPLAY_NAME_MAPPINGS[name]))
    print(f"wrote {len(pack.NODE_CLASS_MAPPINGS)} pages to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
