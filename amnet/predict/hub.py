"""The authors' published AMNet models, by name: a catalogue, and one call from a name to amnet
head checkpoints (download with gdown, sha256, unzip, convert each split with import-weights).

The catalogue restates the release lists of github.com/ok1zjf/AMNet (`data/lamem_weights_urls.txt`,
`data/sun_weights_urls.txt`, `data/ava_weights_urls.txt`; MIT licence, (c) 2018 Jiri Fajtl): a
Google Drive file per model, a zip that unpacks to `<exp>_train_<i>/weights_<e>.pkl`, one per
split (spec section 5). Sizes and split counts are the authors' README's; where it states none
(AVA) the zip decides.

    checkpoints_for("lamem-resnet50")   # -> [.../split_1/head.pt, ..., .../split_5/head.pt]

On disk, under `AMNET_HOME` (default `platformdirs.user_cache_dir("amnet")`):

    models/<name>/<release zip>      as downloaded (kept: re-checked against the manifest's sha256,
                                     and converted again from it without a download)
    models/<name>/manifest.json      source URL, size and sha256 recorded at the first download,
                                     the converted splits
    models/<name>/split_<i>/         head.pt, backbone.pt, import.json (amnet.predict.released_weights); the
                                     unzipped .pkl is removed once converted

The download goes through gdown (Google Drive's confirmation pages are its business), resumable:
an interrupted run leaves gdown's `<zip><8 chars>.part`, which the next run continues (HTTP Range).
`AMNET_HUB_MIRROR=<base URL>` fetches `<base URL>/<release zip>` instead of Drive (a lab mirror; the
tests' loopback server). Offline, the error is one line naming the manual route.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from amnet.core.atomic import atomic_open, atomic_write_text
from amnet.core.errors import WeightsError
from amnet.core.provenance import file_sha256

SOURCE_REPO = "https://github.com/ok1zjf/AMNet"
LICENCE = "MIT (ok1zjf/AMNet, (c) 2018 Jiri Fajtl)"
MANIFEST = "manifest.json"
# resumptions (HTTP Range) within one run after a transfer broke off; a later run resumes too
DOWNLOAD_RETRIES = 3
TIMEOUT = (30.0, 120.0)  # seconds: connect, then between bytes


@dataclass(frozen=True)
class PublishedModel:
    """One released model: a zip of per-split `weights_<e>.pkl` files (spec section 5)."""
    name: str                  # our name: <data set>-<backbone>[-noatt]
    dataset: str               # LaMem | SUN Memorability | AVA
    target: str                # what the score means: memorability | aesthetics
    backbone: str              # torchvision architecture of the trunk (layer3 = 1024 channels)
    attention: bool            # False: the no-attention ablation (uniform weights over the grid)
    splits: int | None         # per the authors' README; None: not stated there
    size: str | None           # the zip's size per the authors' README
    file: str                  # the release zip's name (its stem is the experiment name)
    drive_id: str              # Google Drive file id (the list file's URL)
    list_file: str             # which release list names it
    licence: str = LICENCE

    @property
    def url(self) -> str:
        """The share link exactly as the release list gives it (opens in a browser)."""
        return f"https://drive.google.com/file/d/{self.drive_id}/view?usp=sharing"

    @property
    def experiment(self) -> str:
        """`lamem_ResNet50FC_lstm3[_noatt]`: the folders inside are `<experiment>_train_<i>`."""
        return self.file[:-len(".zip")]


_LAMEM, _SUN, _AVA = "data/lamem_weights_urls.txt", "data/sun_weights_urls.txt", \
    "data/ava_weights_urls.txt"
CATALOGUE: tuple[PublishedModel, ...] = (
    PublishedModel("lamem-resnet50", "LaMem", "memorability", "resnet50", True, 5, "822 MB",
                   "lamem_ResNet50FC_lstm3.zip", "1N3t5QIi2rZng0TZJUFT5achCHyJn8Fg0", _LAMEM),
    PublishedModel("lamem-resnet50-noatt", "LaMem", "memorability", "resnet50", False, 5,
                   "822 MB", "lamem_ResNet50FC_lstm3_noatt.zip",
                   "1YwkXFgy0LEFPXKH5CVf7J92h8mpbHP3p", _LAMEM),
    PublishedModel("lamem-resnet101", "LaMem", "memorability", "resnet101", True, 5, "1.2 GB",
                   "lamem_ResNet101FC_lstm3.zip", "1ztuANxrbMtn1v2QytHnIG5bWhO045jsL", _LAMEM),
    PublishedModel("sun-resnet50", "SUN Memorability", "memorability", "resnet50", True, 25,
                   "4 GB", "sun_ResNet50FC_lstm3.zip", "1eZK9Qvryk86oLcRDOENymHD8YWOsfrBK", _SUN),
    PublishedModel("sun-resnet50-noatt", "SUN Memorability", "memorability", "resnet50", False,
                   25, "4 GB", "sun_ResNet50FC_lstm3_noatt.zip",
                   "1hgDUuH1INbxZLLoFZ3taj5EE_Qjc5Lrv", _SUN),
    PublishedModel("ava-resnet101", "AVA", "aesthetics", "resnet101", True, None, None,
                   "ava_ResNet101FC_lstm3.zip", "1wcnhkqmxCFpNZTVQ2RbpnrIT_TAdDktV", _AVA),
)


def catalogue() -> list[PublishedModel]:
    """Every published model, in the order of the release lists."""
    return list(CATALOGUE)


def get(name: str) -> PublishedModel:
    """The catalogue entry `name`; WeightsError naming the choices otherwise."""
    for entry in CATALOGUE:
        if entry.name == name:
            return entry
    raise WeightsError(f"no published model {name!r}; one of "
                       f"{', '.join(e.name for e in CATALOGUE)} (amnet models list)")


def home() -> Path:
    """`AMNET_HOME`, else the user's cache folder for amnet (platformdirs)."""
    env = os.environ.get("AMNET_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("amnet"))


def model_dir(name: str) -> Path:
    return home() / "models" / get(name).name


def source_url(entry: PublishedModel) -> str:
    """Where the zip is fetched from: `AMNET_HUB_MIRROR/<file>` when set, else Google Drive."""
    mirror = os.environ.get("AMNET_HUB_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{entry.file}" if mirror else entry.url


def manual_route(entry: PublishedModel, zip_path: Path) -> str:
    """The by-hand route, for the one line an offline (or refused) download ends with."""
    return (f"by hand: download {entry.file} from {entry.url} (a browser will do), then put it at "
            f"{zip_path} and run `amnet models download {entry.name}` again, or unzip it and run "
            f"`amnet import-weights {entry.experiment}_train_<i>/weights_<e>.pkl OUTDIR` for each "
            "split (then `amnet predict --checkpoint OUTDIR/head.pt ...`)")


# ---- the manifest --------------------------------------------------------------------------------

def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable ({e}); delete it to record the zip's sha256 "
                           "afresh") from None
    return data if isinstance(data, dict) else {}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _converted(folder: Path, manifest: dict[str, Any]) -> list[Path] | None:
    """The converted heads, split order, if the conversion finished and its files are there."""
    splits = manifest.get("splits") or {}
    if not manifest.get("converted") or not splits:
        return None
    heads = [folder / info["dir"] / "head.pt" for _, info in
             sorted(splits.items(), key=lambda kv: int(kv[0]))]
    if all(h.is_file() and (h.parent / "backbone.pt").is_file() for h in heads):
        return heads
    return None


def _partial_files(zip_path: Path) -> list[Path]:
    """gdown's `<name><8 random chars>.part` files of an interrupted download."""
    return sorted(p for p in zip_path.parent.glob(f"{zip_path.name}*.part")
                  if len(p.name) == len(zip_path.name) + 8 + len(".part"))


def state(name: str) -> str:
    """`yes` (converted), `zip` (downloaded, not converted), `partial` (an interrupted download
    to resume) or `no`."""
    folder = model_dir(name)
    zip_path = folder / get(name).file
    if _converted(folder, _read_manifest(folder)):
        return "yes"
    if zip_path.is_file():
        return "zip"
    return "partial" if _partial_files(zip_path) else "no"


# ---- download ------------------------------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    """A short reason for a network failure (requests' messages nest three exceptions deep)."""
    text = " ".join(str(exc).split())
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).strip()
    if type(exc).__name__ == "HTTPError" and getattr(exc, "response", None) is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}"
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


def _part_size(zip_path: Path) -> int:
    parts = _partial_files(zip_path)
    return parts[0].stat().st_size if parts else 0


def _fetch(entry: PublishedModel, zip_path: Path, progress: bool,
           log: Callable[[str], None]) -> str:
    """Download the zip to `zip_path`, resuming gdown's .part file; returns its sha256.

    gdown runs without retries of its own: an attempt that got bytes is resumed (up to
    DOWNLOAD_RETRIES times), one that got none (offline) ends at once in one line."""
    import gdown
    import requests

    url = source_url(entry)
    for attempt in range(DOWNLOAD_RETRIES + 1):
        before = _part_size(zip_path)
        hasher = hashlib.sha256()  # gdown feeds it the resumed bytes first, then the new ones
        try:
            gdown.download(url, str(zip_path), quiet=not progress, resume=True, hasher=hasher,
                           timeout=TIMEOUT)
            break
        except (gdown.exceptions.DownloadError, requests.exceptions.RequestException,
                OSError) as e:
            have = _part_size(zip_path)
            if have > before and attempt < DOWNLOAD_RETRIES:
                log(f"interrupted after {have} bytes ({_reason(e)}); resuming")
                continue
            where = "" if url == entry.url else f" from {url}"
            what = (f"download of {entry.name}{where} interrupted after {have} bytes "
                    f"({_reason(e)}; kept in {_partial_files(zip_path)[0]}): run `amnet models "
                    f"download {entry.name}` again to resume" if have else
                    f"cannot download {entry.name}{where} ({_reason(e)})")
            raise WeightsError(f"{what}; or {manual_route(entry, zip_path)}") from None
    if not zip_path.is_file():  # gdown returns without raising only when the file is there
        raise WeightsError(f"{zip_path}: gdown finished without writing it; "
                           f"{manual_route(entry, zip_path)}")
    return hasher.hexdigest()


def _check_sha256(entry: PublishedModel, zip_path: Path, sha: str, manifest: dict[str, Any],
                  url: str, folder: Path) -> dict[str, Any]:
    """Record the zip's sha256 the first time; after that, refuse a zip whose bytes changed."""
    recorded = manifest.get("sha256")
    if recorded is None:
        manifest = {**manifest, "name": entry.name, "file": entry.file, "source_url": url,
                    "release_url": entry.url, "licence": entry.licence,
                    "bytes": zip_path.stat().st_size, "sha256": sha,
                    "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _write_manifest(folder, manifest)
    elif recorded != sha:
        raise WeightsError(f"{zip_path}: sha256 {sha[:16]}... differs from {recorded[:16]}... "
                           f"recorded at its first download ({manifest.get('recorded', '?')}): "
                           f"the file is damaged or the source changed; delete it and run "
                           f"`amnet models download {entry.name}` again (if the source really "
                           f"changed, delete {folder / MANIFEST} too)")
    return manifest


# ---- unzip and convert ---------------------------------------------------------------------------

def release_members(zip_path: Path, entry: PublishedModel) -> dict[int, tuple[str, int]]:
    """`{split: (member name, epoch)}` of the `<experiment>_train_<i>/weights_<e>.pkl` files."""
    pattern = re.compile(rf"(?:^|/){re.escape(entry.experiment)}_train_(\d+)/weights_(\d+)\.pkl$")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{zip_path}: not a readable zip ({e}); delete it and run "
                           f"`amnet models download {entry.name}` again") from None
    found: dict[int, list[tuple[str, int]]] = {}
    for member in names:
        m = pattern.search(member)
        if m:
            found.setdefault(int(m.group(1)), []).append((member, int(m.group(2))))
    if not found:
        raise WeightsError(f"{zip_path}: no {entry.experiment}_train_<i>/weights_<e>.pkl inside "
                           f"({len(names)} entries): not the release of {entry.name}")
    for split, files in found.items():
        if len(files) > 1:  # the original would pick by validation rho from train_log_0.csv
            raise WeightsError(f"{zip_path}: split {split} has {len(files)} weight files; the "
                               "release has one per split: convert the one you want with "
                               "`amnet import-weights`")
    return {split: files[0] for split, files in sorted(found.items())}


def _extract(zf: zipfile.ZipFile, member: str, dest: Path) -> None:
    # to a path we name (never the member's own: no zip-slip); the CRC is checked on the way
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(member) as src, atomic_open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _convert(entry: PublishedModel, zip_path: Path, folder: Path, manifest: dict[str, Any],
             trust_pickle: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Unzip and convert every split not yet converted; the manifest records each as it lands."""
    from amnet.predict.released_weights import import_weights

    members = release_members(zip_path, entry)
    if entry.splits is not None and len(members) != entry.splits:
        log(f"note: {zip_path.name} holds {len(members)} splits, the authors' README says "
            f"{entry.splits}; using the {len(members)}")
    splits = dict(manifest.get("splits") or {})
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for k, (split, (member, epoch)) in enumerate(members.items(), 1):
                out = folder / f"split_{split}"
                if str(split) in splits and (out / "head.pt").is_file() \
                        and (out / "backbone.pt").is_file():
                    continue
                log(f"converting split {split} ({k}/{len(members)}): {member}")
                # the release's own path, so import_weights reads steps/attention/data set from it
                pkl = folder / "release" / f"{entry.experiment}_train_{split}" / f"weights_{epoch}.pkl"
                _extract(zf, member, pkl)
                import_weights(pkl, out, trust_pickle=trust_pickle,
                               provenance={"published_model": entry.name,
                                           "release_zip": entry.file, "zip_member": member,
                                           "zip_sha256": manifest["sha256"],
                                           "release_url": entry.url, "licence": entry.licence})
                pkl.unlink()
                splits[str(split)] = {"dir": out.name, "member": member, "epoch": epoch}
                manifest = {**manifest, "splits": splits}
                _write_manifest(folder, manifest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise WeightsError(f"{zip_path}: damaged zip ({e}); delete it and run "
                           f"`amnet models download {entry.name}` again") from None
    shutil.rmtree(folder / "release", ignore_errors=True)
    manifest = {**manifest, "splits": splits, "converted": True}
    _write_manifest(folder, manifest)
    return manifest


# ---- the public calls ----------------------------------------------------------------------------

def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def download(name: str, *, progress: bool = True, force: bool = False, trust_pickle: bool = False,
             log: Callable[[str], None] = _stderr) -> list[Path]:
    """Fetch (or resume, or re-check) `name`'s zip, check its sha256, convert every split;
    returns the head checkpoints, split order. `force`: download and convert again (the sha256
    recorded at the first download still has to match)."""
    entry = get(name)
    folder = model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    zip_path = folder / entry.file
    manifest = _read_manifest(folder)
    if force:
        zip_path.unlink(missing_ok=True)
        for info in (manifest.get("splits") or {}).values():
            shutil.rmtree(folder / info["dir"], ignore_errors=True)
        manifest = {k: v for k, v in manifest.items() if k not in ("splits", "converted")}
        _write_manifest(folder, manifest)
    url = source_url(entry)
    if zip_path.is_file():
        log(f"checking {zip_path} (sha256)")
        sha = file_sha256(zip_path)
    else:
        log(f"downloading {entry.name} ({entry.size or 'size not stated'}) from {url}")
        sha = _fetch(entry, zip_path, progress, log)
    manifest = _check_sha256(entry, zip_path, sha, manifest, url, folder)
    heads = _converted(folder, manifest)
    if heads is None:
        manifest = _convert(entry, zip_path, folder, manifest, trust_pickle, log)
        heads = _converted(folder, manifest)
    assert heads is not None
    return heads


def checkpoints_for(name: str) -> list[Path]:
    """The converted head checkpoints of published model `name`, one per split (split order),
    downloading and converting first when needed. Each head's backbone is its split's own
    `backbone.pt` (named in the checkpoint's provenance)."""
    get(name)
    folder = model_dir(name)
    heads = _converted(folder, _read_manifest(folder))
    return heads if heads is not None else download(name)


__all__ = ["CATALOGUE", "PublishedModel", "catalogue", "checkpoints_for", "download", "get",
           "home", "manual_route", "model_dir", "release_members", "source_url", "state"]
