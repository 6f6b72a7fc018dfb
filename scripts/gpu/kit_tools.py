"""Helpers of the GPU kit (scripts/gpu/fetch.sh, scripts/gpu/run.sh). Standard library and pip only, so
they run before anything is installed, on this machine and on the GPU machine alike.

    kit_tools.py check-wheels DIR [--max-mib N]   the carried folder: exactly the pinned files, one version
                                                  each, and requirements.txt resolving offline for Python
                                                  3.12 on manylinux from them plus the image's packages
    kit_tools.py prune DIR                        remove other versions of pinned packages from DIR
    kit_tools.py image-versions                   the image packages' versions in this interpreter
    kit_tools.py toy-spec IN OUT KEY=VALUE...     a copy of a sweep file with [accuracy] settings replaced
    kit_tools.py merge-validate OUT DIR...        one VALIDATE.md and validate.json from several validations
    kit_tools.py summary RUN_DIR                  RUN_DIR/SUMMARY.md: steps, build, validation, headlines,
                                                  the Titans backends side by side
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
UNKNOWN = None  # an image package whose version nobody has recorded


class KitError(Exception):
    pass


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path) -> list[str]:
    """Non-empty lines without comments."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def read_pins(path: Path) -> dict[str, str | None]:
    """name -> version of lines `name==version` (`name` alone: version unknown); `!name` lines skipped."""
    pins: dict[str, str | None] = {}
    for line in read_list(path):
        if line.startswith("!"):
            continue
        name, _, version = line.partition("==")
        pins[canonical(name)] = version.strip() or UNKNOWN
    return pins


def read_excluded(path: Path) -> set[str]:
    return {canonical(line[1:]) for line in read_list(path) if line.startswith("!")}


def dist_of(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a wheel or .tar.gz sdist file name."""
    if filename.endswith(".whl"):
        name, version = filename.split("-")[:2]
    elif filename.endswith(".tar.gz"):
        name, _, version = filename[: -len(".tar.gz")].rpartition("-")
    else:
        raise KitError(f"{filename}: neither a wheel nor a .tar.gz sdist")
    return canonical(name), version


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel that stands for a package the image already has (no files, no requirements)."""
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as zf:
        zf.writestr(
            f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: kit_tools\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{dist}.dist-info/RECORD", "")


def _sdist_requires(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        member = next(m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        text = tf.extractfile(member).read().decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def resolve_offline(folder: Path, requirements: Path, image: dict[str, str | None]) -> list[dict]:
    """pip's resolver, with no index, for Python 3.12 on manylinux x86-64: requirements.txt from the
    carried wheels plus stand-ins for the image's packages. Returns pip's install report."""
    from_image = {name: version or "0" for name, version in image.items()}
    with tempfile.TemporaryDirectory(prefix="kit-resolve-") as tmp:
        stubs = Path(tmp) / "image"
        stubs.mkdir()
        for name, version in from_image.items():
            _stub_wheel(stubs, name, version)
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check",
            "--dry-run", "--ignore-installed", "--no-index", "--only-binary", ":all:",
            "--find-links", str(folder), "--find-links", str(stubs),
            "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp312",
            *(arg for p in PLATFORMS for arg in ("--platform", p)),
            "--target", str(Path(tmp) / "target"), "--report", str(report), "--quiet",
            "-r", str(requirements),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KitError(
                f"{requirements.name} does not resolve offline from {folder} and the image's packages:\n"
                + (proc.stderr or proc.stdout).strip()
            )
        installs = json.loads(report.read_text())["install"]
    for item in installs:
        url = item["download_info"]["url"]
        item["_source"] = "image" if "/image/" in url else "carried"
    return installs


def _version_ok(requirement: str, version: str | None) -> bool | None:
    """True/False whether `version` meets the requirement's specifier; None if that cannot be told."""
    from pip._vendor.packaging.requirements import Requirement

    spec = Requirement(requirement).specifier
    if not str(spec):
        return True
    if version is None:
        return None
    return spec.contains(version, prereleases=True)


def check_wheels(folder: Path, max_mib: float, lists: Path = HERE) -> int:
    """0 if `folder` holds what the lists in `lists` (wheels.txt, sdists.txt, requirements.txt, image.txt)
    pin, one version each, and requirements.txt resolves offline from it; else 1, the problems on stderr."""
    if not folder.is_dir():
        raise KitError(f"{folder} is not a folder: run scripts/gpu/fetch.sh first")
    wheels = read_pins(lists / "wheels.txt")
    sdists = read_pins(lists / "sdists.txt")
    image = read_pins(lists / "image.txt")
    problems: list[str] = []
    warnings: list[str] = []

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".whl", ".tar.gz")))
    found: dict[str, list[tuple[str, Path]]] = {}
    for path in files:
        name, version = dist_of(path.name)
        found.setdefault(name, []).append((version, path))
    for name, versions in found.items():
        if len(versions) > 1:
            problems.append(
                f"{name}: {len(versions)} files ({', '.join(p.name for _, p in versions)}); keep one"
            )
    for kind, pins, suffix in (("wheel", wheels, ".whl"), ("sdist", sdists, ".tar.gz")):
        for name, version in pins.items():
            have = [(v, p) for v, p in found.get(name, []) if p.name.endswith(suffix)]
            if not have:
                problems.append(f"{name}=={version}: {kind} missing")
            elif version not in {v for v, _ in have}:
                problems.append(f"{name}: {have[0][1].name} found, {name}=={version} pinned")
    extra = sorted(set(found) - set(wheels) - set(sdists))
    if extra:
        problems.append(
            f"not in wheels.txt or sdists.txt: {', '.join(extra)} (remove them, or fetch into another folder)"
        )

    resolved: list[dict] = []
    if not problems:
        try:
            resolved = resolve_offline(folder, lists / "requirements.txt", image)
        except KitError as err:
            problems.append(str(err))
    carried_used = {canonical(i["metadata"]["name"]) for i in resolved if i["_source"] == "carried"}
    if resolved:
        unused = sorted(set(wheels) - carried_used)
        if unused:
            problems.append(f"carried but not needed by requirements.txt: {', '.join(unused)}")

    # The sdists are installed with --no-deps: what they require must be on the image, or carried.
    excluded = read_excluded(lists / "sdists.txt")
    for name in sdists:
        for path in (p for _, p in found.get(name, []) if p.name.endswith(".tar.gz")):
            for requirement in _sdist_requires(path):
                if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
                    continue
                req_name = canonical(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0])
                if req_name in excluded:
                    continue
                if req_name in image:
                    ok = _version_ok(requirement.split(";")[0], image[req_name])
                elif req_name in wheels:
                    ok = _version_ok(requirement.split(";")[0], wheels[req_name])
                else:
                    problems.append(f"{path.name} requires {requirement!r}: neither carried nor on the image")
                    continue
                if ok is False:
                    problems.append(
                        f"{path.name} requires {requirement!r}: the image/carried version differs"
                    )
                elif ok is None:
                    warnings.append(
                        f"{path.name} requires {requirement!r}: the image's version is not recorded"
                    )

    total = sum(p.stat().st_size for p in files)
    print(f"{'file':72s} {'KiB':>8s}")
    for path in files:
        print(f"{path.name:72s} {path.stat().st_size / 1024:8.0f}")
    print(f"{'total':72s} {total / 1024:8.0f}  ({total / 2**20:.2f} MiB; limit {max_mib:g} MiB)")
    if resolved:
        print("resolved offline for Python 3.12, manylinux x86-64:")
        for item in sorted(resolved, key=lambda i: canonical(i["metadata"]["name"])):
            meta = item["metadata"]
            version = meta["version"] if item["_source"] == "carried" else image.get(canonical(meta["name"]))
            print(f"  {meta['name']} {version or '(version not recorded)'}  <- {item['_source']}")
    if total > max_mib * 2**20:
        problems.append(f"{total / 2**20:.1f} MiB is over the {max_mib:g} MiB limit")
    for warning in warnings:
        print(f"warning: {warning}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def prune(folder: Path, lists: Path = HERE) -> int:
    """Remove the files of pinned packages at other versions than pinned (left by an earlier fetch);
    files of packages that are not pinned at all are left alone (check-wheels names them)."""
    pins = {**read_pins(lists / "wheels.txt"), **read_pins(lists / "sdists.txt")}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith((".whl", ".tar.gz")):
            continue
        name, version = dist_of(path.name)
        if name in pins and version != pins[name]:
            print(f"removing {path.name}: {name}=={pins[name]} is pinned")
            path.unlink()
    return 0


def image_versions() -> int:
    """The versions this interpreter has of the image's packages, against image.txt."""
    for name, recorded in read_pins(HERE / "image.txt").items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = "MISSING"
        note = "" if recorded in (None, have) else f"  (image.txt: {recorded})"
        print(f"  {name} {have}{note}")
    return 0


def toy_spec(src: Path, dst: Path, settings: list[str]) -> int:
    """Copy a sweep file, replacing `key = value` lines of its [accuracy] table; every key must be there."""
    wanted = dict(s.split("=", 1) for s in settings)
    lines, table, done = [], None, set()
    for line in src.read_text().splitlines():
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            table = header.group(1).strip()
        key = re.match(r"^\s*([A-Za-z_]+)\s*=", line)
        if table == "accuracy" and key and key.group(1) in wanted:
            line = f"{key.group(1)} = {wanted[key.group(1)]}"
            done.add(key.group(1))
        lines.append(line)
    missing = sorted(set(wanted) - done)
    if missing:
        raise KitError(f"{src}: no {', '.join(missing)} in its [accuracy] table")
    dst.write_text("\n".join(lines) + "\n")
    return 0


def merge_validate(out: Path, parts: list[Path]) -> int:
    """VALIDATE.md and validate.json of several `bench validate` runs (one per model) as one."""
    rows, manifest, header, table = [], None, [], []
    for part in parts:
        jpath, mpath = part / "validate.json", part / "VALIDATE.md"
        if not jpath.exists() or not mpath.exists():
            rows.append(
                {"model": part.name, "backend": "-", "dtype": "-", "status": "no result (see its log)"}
            )
            table.append(
                f"| {part.name} |  | - | - |  |  |  | no result (see logs/validate-{part.name}.log) |"
            )
            continue
        data = json.loads(jpath.read_text())
        manifest = manifest or data["manifest"]
        rows += data["rows"]
        lines = mpath.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("| model"))
        header = header or lines[: start + 2]
        table += [line for line in lines[start + 2 :] if line.startswith("|")]
    if not header:
        header = ["# Backend validation", "", "| model | args | backend | dtype | T | forward rel. err "
                  "| gradient rel. err | status |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "VALIDATE.md").write_text("\n".join(header + table) + "\n")
    (out / "validate.json").write_text(json.dumps({"manifest": manifest, "rows": rows}, indent=2))
    bad = [r for r in rows if r.get("status") not in ("ok", "no reference backend declared")]
    print(f"{len(rows)} rows, {len(bad)} not ok")
    return 0


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _si(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _sweep_section(title: str, folder: Path, build_ended: float | None) -> list[str]:
    rows = _read_jsonl(folder / "results.jsonl")
    if not rows:
        return [f"## {title}", "", "No results.", ""]
    timing = [r for r in rows if r["mode"] in ("train", "prefill", "decode")]
    lines = [f"## {title}", ""]
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r.get("status", "?")] = by_status.get(r.get("status", "?"), 0) + 1
    lines.append("Cells: " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) + ".")
    if timing:
        first = timing[0]
        lines.append(
            f"Each timing cell: {first.get('warmup')} warm-up call, 1 call for peak memory, then "
            f"{first.get('repeats')} timed repeats (median below); decode: {first.get('decode_tokens')} "
            f"tokens after the prompt; d_model {first.get('d_model')}, {first.get('n_layers')} layers, "
            f"{first.get('dtype')}, batch {first.get('batch_size')}, {first.get('device')}."
        )
    if build_ended is not None:
        during = sum(1 for r in rows if r.get("finished_at", 0) <= build_ended)
        if during:
            lines.append(
                f"{during} of {len(rows)} cells finished while the Mamba build was compiling in the "
                "background (at the lowest CPU priority)."
            )
    lines.append("")
    if timing:
        lens = sorted({r["seq_len"] for r in timing})
        lines += [
            "Median tokens/s (train · prefill · decode), and each model's cells' wall-clock seconds:",
            "",
            "| model | backend | " + " | ".join(f"T={t}" for t in lens) + " | seconds |",
            "|---|---|" + "---|" * len(lens) + "---|",
        ]
        labels = list(dict.fromkeys(r["label"] for r in rows))
        for label in labels:
            mine = [r for r in rows if r["label"] == label]
            backend = next((r["backend"] for r in mine if r.get("backend")), "–")
            cells = []
            for t in lens:
                parts = []
                for mode in ("train", "prefill", "decode"):
                    r = next((r for r in mine if r["mode"] == mode and r["seq_len"] == t), None)
                    parts.append(
                        "–"
                        if r is None
                        else _si(r["tokens_per_s"])
                        if r.get("status") == "ok"
                        else r["status"]
                    )
                cells.append(" · ".join(parts))
            seconds = sum(r.get("wall_s") or 0 for r in mine)
            lines.append(f"| {label} | {backend} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        lines.append("")
    acc = [r for r in rows if r["mode"] == "accuracy"]
    if acc:
        lines += ["Accuracy smoke test (accuracy at each evaluation length):", ""]
        lines += ["| model | task | status | steps | accuracy by length |", "|---|---|---|---|---|"]
        for r in acc:
            by_len = ", ".join(
                f"{a['eval_len']}: {a['accuracy']:.2f}" for a in r.get("accuracy_by_len") or []
            )
            lines.append(
                f"| {r['label']} | {r.get('task_label')} | {r.get('status')} | {r.get('steps_run', '–')} "
                f"| {by_len or r.get('error', '')[:120]} |"
            )
        lines.append("")
    return lines


# The Titans backend comparison (run.sh step titans-backends): the models and, from the main sweep, the
# recurrent models set beside them.
TITANS_COMPARED = ("titans-lmm", "titans-mal")
BESIDE_TITANS = ("gated-deltanet", "mamba2")


def _cell(row: dict | None) -> str:
    """tokens/s and, where counted, dispatches (on CUDA: kernel launches) per token."""
    if row is None:
        return "–"
    if row.get("status") != "ok":
        return row.get("status", "?")
    launches = row.get("dispatches_per_token")
    return _si(row["tokens_per_s"]) + (f" ({launches:.3g}/tok)" if launches is not None else "")


def _find(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _titans_backends_section(run: Path) -> list[str]:
    """Titans on the PyTorch and the Triton backend side by side, with the main sweep's Gated DeltaNet and
    Mamba2 at the same lengths, and the Triton path's speed-up."""
    rows = [r for r in _read_jsonl(run / "titans-backends" / "results.jsonl") if r["mode"] != "accuracy"]
    if not rows:
        return []
    beside = [r for r in _read_jsonl(run / "sweep" / "results.jsonl") if r["model"] in BESIDE_TITANS]
    lens = sorted({r["seq_len"] for r in rows})
    lines = [
        "## Titans memory: PyTorch vs Triton",
        "",
        "Tokens/s (dispatches per token: on CUDA the kernels launched, on the CPU the operator calls) of "
        "titans-lmm and titans-mal on each backend (step titans-backends), beside the main sweep's Gated "
        "DeltaNet and Mamba2 in the same shape; `speed-up` is Triton over PyTorch.",
        "",
    ]
    for mode in ("prefill", "train"):
        lines += [
            f"**{mode}**",
            "",
            "| model | backend | " + " | ".join(f"T={t}" for t in lens) + " |",
            "|---|---|" + "---|" * len(lens),
        ]
        for model in TITANS_COMPARED:
            pair = []
            for backend in ("torch-chunked", "triton"):
                label = f"{model}-{backend.split('-')[0]}"
                found = [_find(rows, mode=mode, seq_len=t, model=model, label=label) for t in lens]
                used = next((r["backend"] for r in found if r and r.get("backend")), backend)
                lines.append(f"| {model} | {used} | " + " | ".join(_cell(r) for r in found) + " |")
                pair.append(found)
            ratios = []
            for slow, fast in zip(*pair, strict=True):
                ok = slow and fast and slow.get("status") == fast.get("status") == "ok"
                ratios.append(f"{fast['tokens_per_s'] / slow['tokens_per_s']:.2g}x" if ok else "–")
            lines.append(f"| {model} | speed-up | " + " | ".join(ratios) + " |")
        for model in BESIDE_TITANS:
            found = [_find(beside, mode=mode, seq_len=t, model=model) for t in lens]
            used = next((r["backend"] for r in found if r and r.get("backend")), "–")
            lines.append(f"| {model} | {used} | " + " | ".join(_cell(r) for r in found) + " |")
        lines.append("")
    return lines


def summary(run: Path) -> int:
    lines = ["# GPU kit run", ""]
    info = run / "kit-info.txt"
    if info.exists():
        lines += [f"- {line}" for line in info.read_text().splitlines() if line.strip()]
        lines.append("")
    steps = run / "steps.tsv"
    if steps.exists():
        lines += ["## Steps", "", "| step | status | seconds | limit (s) |", "|---|---|---|---|"]
        for row in steps.read_text().splitlines():
            name, status, seconds, limit = (row.split("\t") + ["", "", "", ""])[:4]
            lines.append(f"| {name} | {status} | {seconds} | {limit} |")
        lines.append("")
    for sub, title in (
        ("validate", "Validation"),
        ("validate-mamba-ssm", "Validation after the Mamba build"),
    ):
        data = run / sub / "validate.json"
        if not data.exists():
            continue
        rows = json.loads(data.read_text())["rows"]
        bad = [r for r in rows if r.get("status") not in ("ok", "no reference backend declared")]
        lines += [
            f"## {title}",
            "",
            f"{len(rows) - len(bad)} of {len(rows)} rows ok (full table: {sub}/VALIDATE.md).",
        ]
        if bad:
            lines += ["", "| model | backend | dtype | status |", "|---|---|---|---|"]
            lines += [
                f"| {r['model']} | {r.get('backend_used', r.get('backend'))} | {r.get('dtype')} "
                f"| {r['status']}{': ' + r['error'][:160] if r.get('error') else ''} |"
                for r in bad
            ]
        backends = sorted({f"{r['model']}: {r.get('backend_used', r.get('backend'))}" for r in rows})
        lines += ["", "Backends checked: " + "; ".join(backends) + ".", ""]
    ended = run / "build-ended"
    build_ended = float(ended.read_text()) if ended.exists() else None
    lines += _sweep_section("Sweep", run / "sweep", build_ended)
    lines += _titans_backends_section(run)
    if (run / "sweep-mamba-ssm").exists():
        lines += _sweep_section("Sweep of the Mamba kernels", run / "sweep-mamba-ssm", build_ended)
    text = "\n".join(lines).rstrip() + "\n"
    (run / "SUMMARY.md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-wheels")
    p.add_argument("folder", type=Path)
    p.add_argument("--max-mib", type=float, default=60.0)
    p.add_argument("--lists", type=Path, default=HERE, help="folder of the pin lists (default: here)")
    p = sub.add_parser("prune")
    p.add_argument("folder", type=Path)
    sub.add_parser("image-versions")
    p = sub.add_parser("toy-spec")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    p = sub.add_parser("merge-validate")
    p.add_argument("out", type=Path)
    p.add_argument("parts", type=Path, nargs="+")
    p = sub.add_parser("summary")
    p.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "check-wheels":
            return check_wheels(args.folder, args.max_mib, args.lists)
        if args.command == "prune":
            return prune(args.folder)
        if args.command == "image-versions":
            return image_versions()
        if args.command == "toy-spec":
            return toy_spec(args.src, args.dst, args.settings)
        if args.command == "merge-validate":
            return merge_validate(args.out, args.parts)
        return summary(args.run)
    except KitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
