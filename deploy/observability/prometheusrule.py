"""The PrometheusRule of deploy/k8s/components/monitoring, made from rules.yml.

rules.yml is the one source of the alert rules; the PrometheusRule's `spec` is its `groups:`,
indented, comments and all. deploy/observability/check.sh runs this with --check, which fails
when the checked-in PrometheusRule differs from what rules.yml makes (after an edit of rules.yml,
run it without --check to rewrite the file).

    python deploy/observability/prometheusrule.py [--check]
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
TARGET = HERE.parent / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/observability/rules.yml by deploy/observability/prometheusrule.py: edit
# rules.yml and run that script (deploy/observability/check.sh fails when the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: printjob-gateway
  labels:
    app.kubernetes.io/name: printjob-gateway
    release: prometheus
spec:
"""


def render() -> str:
    text = RULES.read_text()
    start = text.index("\ngroups:\n") + 1
    body = text[start:]
    indented = "".join(
        ("  " + line if line.strip() else line) for line in body.splitlines(keepends=True)
    )
    return HEADER + indented


def main() -> int:
    wanted = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != wanted:
            print(
                f"{TARGET} is not what {RULES} makes: run python {pathlib.Path(__file__).name}",
                file=sys.stderr,
            )
            return 1
        print(f"{TARGET.name} matches {RULES.name}")
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
