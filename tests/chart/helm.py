"""`helm template`, `helm lint` and `helm version` on Helm's own Go SDK.

PyPI's helm-python-sdk ships no `helm` executable: it ships libhelm_c, a C ABI over Helm v4's
Go packages, and Python bindings to it. This file gives that library the command line the
chart test uses, so the test runs the same against a real `helm` binary (SUANLI_HELM) and
against this one. `template` is what `helm template` itself runs: a client-only dry-run
install (`action.Install`, DryRunClient), with the kube version checked against the chart's
`kubeVersion`. Only the flags the test uses are known; anything else is a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import helm_python as helm
from helm_python import _native


def merged_values(files: list[str]) -> dict[str, Any]:
    """The values files merged as `helm -f a -f b` does: later files win, maps merge."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = merge(base[key], value)
            else:
                base[key] = value
        return base

    values: dict[str, Any] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            # Helm's own YAML reading (sigs.k8s.io/yaml), not PyYAML's.
            values = merge(values, helm.values_from_yaml(f.read()))
    return values


def template(args: argparse.Namespace) -> int:
    if args.chart is None:
        name, chart = "release-name", args.name
    else:
        name, chart = args.name, args.chart
    with helm.Chart.load(chart) as loaded:
        # The bindings return the release without its hooks; refuse rather than drop them.
        hooked = [t["name"] for t in loaded.templates if "helm.sh/hook" in t["data"]]
        if hooked:
            print(f"Error: hooks are not supported here: {', '.join(hooked)}", file=sys.stderr)
            return 1
    options: dict[str, Any] = {"namespace": args.namespace, "dry_run": "client"}
    if args.kube_version:
        # Not among the Python bindings' keywords, but part of the library's install options.
        options["kube_version"] = args.kube_version
    with helm.Config(namespace=args.namespace) as config:
        release = json.loads(
            _native.call_string(
                "helm_install",
                config._raw(),
                _native.HANDLE(0),
                _native.HANDLE(0),
                chart,
                name,
                json.dumps(merged_values(args.values)),
                json.dumps(options),
            )
        )
    print(release["manifest"].strip())
    return 0


def lint(args: argparse.Namespace) -> int:
    report = helm.lint(
        args.chart,
        merged_values(args.values),
        strict=args.strict,
        namespace=args.namespace,
        kube_version=args.kube_version,
    )
    severities = {1: "INFO", 2: "WARNING", 3: "ERROR"}
    print(f"==> Linting {args.chart}")
    for message in report["messages"]:
        label = severities.get(message["severity"], "UNKNOWN")
        print(f"[{label}] {message['path']}: {message['error']}")
    # As `helm lint`: errors fail the chart, and so do warnings with --strict.
    worst = max((m["severity"] for m in report["messages"]), default=0)
    failed = bool(report["errors"]) or worst >= 3 or (args.strict and worst >= 2)
    for error in report["errors"]:
        print(f"[ERROR] {error}")
    print(f"\n1 chart(s) linted, {int(failed)} chart(s) failed")
    return 1 if failed else 0


def version(_: argparse.Namespace) -> int:
    print(f"{helm.helm_sdk_version()} (helm-python-sdk {helm.__version__})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="helm")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-n", "--namespace", default="default")
        sub.add_argument("-f", "--values", action="append", default=[])
        sub.add_argument("--kube-version")

    sub = commands.add_parser("template")
    sub.add_argument("name")
    sub.add_argument("chart", nargs="?")
    common(sub)
    sub.set_defaults(run=template)

    sub = commands.add_parser("lint")
    sub.add_argument("chart")
    sub.add_argument("--strict", action="store_true")
    common(sub)
    sub.set_defaults(run=lint)

    sub = commands.add_parser("version")
    sub.add_argument("--short", action="store_true")
    sub.set_defaults(run=version)

    args = parser.parse_args()
    try:
        return int(args.run(args))
    except helm.HelmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
