"""Breaking-change checks of the API contracts against the committed snapshots.

    python scripts/contracts.py check     # CI: fail on an undeclared breaking change
    python scripts/contracts.py update    # at a release: the snapshots become today's API

`contracts/openapi.json` and `contracts/inference.proto` are the published
contract. `check` compares what the code serves now against them: the OpenAPI
document with Optic (`optic diff --check`), the protocol with `buf breaking`
(rule set PACKAGE: a deleted RPC or field, a renumbered field, a changed type).
Each breaking finding must be declared in `contracts/breaking.toml` (with the
reason it is acceptable), and each declaration must still match a finding:
otherwise the check fails. Additive changes pass and are listed. `update`
rewrites the snapshots and empties the declarations.

The tools come from the npm registry (`tools/contracts`, installed with `npm ci`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
TOOLS = ROOT / "tools" / "contracts"
PROTO = ROOT / "src" / "modelplex" / "grpc" / "protos" / "inference.proto"
DECLARED = CONTRACTS / "breaking.toml"
_OPERATION = re.compile(r"^x (GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+):")
_RULE = re.compile(r"^\s*x \[([^\]]+)\] (.*)$")


@dataclass(frozen=True)
class Finding:
    tool: str
    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.tool}: [{self.rule}] {self.where}: {self.message}"


def tool(name: str) -> Path:
    binary = TOOLS / "node_modules" / ".bin" / name
    if not binary.exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=TOOLS, check=True
        )
    return binary


def current_openapi(into: Path) -> Path:
    """The document the server serves, built from the code (no server started)."""
    sys.path.insert(0, str(ROOT / "src"))
    from modelplex.api.app import create_app
    from modelplex.app import Modelplex
    from modelplex.settings import Settings

    with tempfile.TemporaryDirectory() as state:
        settings = Settings(data_dir=Path(state), cache_dir=Path(state), workers=0)
        document = create_app(Modelplex(settings, Path(state))).openapi()
    path = into / "openapi.json"
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return path


def openapi_findings(snapshot: Path, current: Path) -> list[Finding]:
    env = {**os.environ, "OPTIC_TELEMETRY_LEVEL": "off"}
    result = subprocess.run(
        [str(tool("optic")), "diff", str(snapshot), str(current), "--check"],
        capture_output=True, text=True, env=env, check=False, cwd=TOOLS,
    )  # fmt: skip
    findings, operation = [], "(document)"
    for line in result.stdout.splitlines():
        if match := _OPERATION.match(line):
            operation = f"{match[1]} {match[2]}"
        elif match := _RULE.match(line):
            findings.append(Finding("openapi", match[1], operation, match[2].strip()))
    if result.returncode != 0 and not findings:  # Optic failed to run, not to compare
        raise SystemExit(f"optic failed:\n{result.stdout}\n{result.stderr}")
    return findings


def proto_findings() -> list[Finding]:
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "live").mkdir()
        (Path(work) / "snapshot").mkdir()
        shutil.copy(PROTO, Path(work) / "live" / PROTO.name)
        shutil.copy(CONTRACTS / PROTO.name, Path(work) / "snapshot" / PROTO.name)
        config = json.dumps({"version": "v2", "breaking": {"use": ["PACKAGE"]}})
        result = subprocess.run(
            [str(tool("buf")), "breaking", ".", "--against", "../snapshot",
             "--config", config, "--against-config", config, "--error-format", "json"],
            capture_output=True, text=True, cwd=Path(work) / "live", check=False,
        )  # fmt: skip
    findings = []
    for line in result.stdout.splitlines():
        item = json.loads(line)
        where = f"{item.get('path', PROTO.name)}:{item.get('start_line', 0)}"
        findings.append(Finding("proto", item["type"], where, item["message"]))
    if result.returncode != 0 and not findings:
        raise SystemExit(f"buf failed:\n{result.stdout}\n{result.stderr}")
    return findings


def matches(declaration: dict[str, str], finding: Finding, tool_name: str) -> bool:
    return (
        tool_name == finding.tool
        and declaration["rule"] == finding.rule
        and declaration.get("where", "") in finding.where
        and declaration.get("message", "") in finding.message
    )


def check() -> int:
    with tempfile.TemporaryDirectory() as build:
        findings = openapi_findings(CONTRACTS / "openapi.json", current_openapi(Path(build)))
    findings += proto_findings()
    document = tomllib.loads(DECLARED.read_text())
    declarations = [("openapi", d) for d in document.get("openapi", [])]
    declarations += [("proto", d) for d in document.get("proto", [])]
    undeclared = [f for f in findings if not any(matches(d, f, name) for name, d in declarations)]
    stale = [d for name, d in declarations if not any(matches(d, f, name) for f in findings)]
    for finding in findings:
        print(("  declared  " if finding not in undeclared else "  BREAKING  ") + str(finding))
    for declaration in stale:
        print(f"  stale declaration (matches no change): {declaration}")
    if undeclared or stale:
        print(
            f"{len(undeclared)} undeclared breaking change(s), {len(stale)} stale declaration(s): "
            "declare each accepted change in contracts/breaking.toml (rule, where, reason), "
            "or undo it"
        )
        return 1
    print(f"contracts: no undeclared breaking change ({len(findings)} declared)")
    return 0


def update() -> int:
    current_openapi(CONTRACTS)
    shutil.copy(PROTO, CONTRACTS / PROTO.name)
    DECLARED.write_text(DECLARED.read_text().split("\n[[", 1)[0].rstrip() + "\n")
    print("contracts/ now holds today's API; breaking.toml has no declarations left")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "update"])
    args = parser.parse_args()
    sys.exit(check() if args.command == "check" else update())


if __name__ == "__main__":
    main()
