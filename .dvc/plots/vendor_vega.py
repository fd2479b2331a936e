"""Write offline.html: the page template `dvc plots show` fills (.dvc/config: plots.html_template),
with vega, vega-lite and vega-embed inlined, so the plots render with no network.

DVC's own page loads these three scripts from a CDN (dvc_render.vega.VegaRenderer.SCRIPTS), so
without a network it shows empty boxes. This template has no `{scripts}` placeholder (DVC puts
its CDN tags there) and carries the same versions inline, from the npm registry's release
tarballs. The page written by `dvc plots show` is then self-contained (~830 KB), wherever `-o`
puts it.

Run once when changing versions (needs npm and the registry; the checked-in offline.html is what
users get):  python .dvc/plots/vendor_vega.py
Licences: the three packages are BSD-3-Clause (University of Washington Interactive Data Lab);
their LICENSE texts are copied into offline.html above the scripts. vega's bundle includes d3
modules (ISC licence).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the versions dvc-render 1.0.2 loads (VegaRenderer.SCRIPTS), and their files' sha256
PACKAGES = {
    "vega": ("5.20.2", "build/vega.min.js",
             "4794d0169cb1f3ebad8117fe98ba5bd652dd725905ec0384e832391dbccb03be"),
    "vega-lite": ("5.2.0", "build/vega-lite.min.js",
                  "d73157451b3978015ab31dacd55ff90d986ab8663fc0abed50f97b3cd90002cb"),
    "vega-embed": ("6.18.2", "build/vega-embed.min.js",
                   "1ba9826431ddc9805e815ad92acc811c819f2bfd32bda2a128b8c4b5070fab5e"),
}

PAGE = """<!DOCTYPE html>
<!-- amnet: DVC's plot page with its scripts inline, so it renders offline.
     Made by .dvc/plots/vendor_vega.py (do not edit by hand); used through .dvc/config
     plots.html_template. DVC replaces the refresh_tag and plot_divs placeholders. -->
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
SCRIPTS
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _fetch(name: str, version: str, member: str, tmp: Path) -> tuple[str, str]:
    """(script text, LICENSE text) of name@version from its npm tarball."""
    subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    with tarfile.open(tmp / f"{name}-{version}.tgz") as tar:
        def read(path: str) -> bytes:
            f = tar.extractfile(f"package/{path}")
            assert f is not None, path
            return f.read()
        meta = json.loads(read("package.json"))
        assert meta["license"] == "BSD-3-Clause", (name, meta["license"])
        return read(member).decode("utf-8"), read("LICENSE").decode("utf-8")


def build(packages: dict[str, tuple[str, str, str]] = PACKAGES) -> str:
    """The template text, with each package's checked script inline."""
    blocks = []
    with tempfile.TemporaryDirectory() as d:
        for name, (version, member, sha) in packages.items():
            script, licence = _fetch(name, version, member, Path(d))
            got = hashlib.sha256(script.encode("utf-8")).hexdigest()
            if got != sha:
                raise SystemExit(f"{name}@{version} {member}: sha256 {got}, expected {sha}")
            # the source map is not shipped: drop the comment that points browsers at it
            script = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", script)
            for bad in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
                assert bad not in script, (name, bad)
            blocks.append(f"<!-- {name}@{version} ({member}), BSD-3-Clause:\n"
                          f"{licence.strip().replace('--', '- -')}\n-->\n"
                          f"<script>\n{script}\n</script>")
    return PAGE.replace("SCRIPTS", "\n".join(blocks))


if __name__ == "__main__":
    out = HERE / "offline.html"
    out.write_text(build(), encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
