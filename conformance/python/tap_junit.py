"""Turn the TAP output of a non-Python suite into JUnit XML for run.sh's summary.

Usage: tap_junit.py SUITE TAP_FILE EXIT_STATUS OUT_XML [SETUP_ERROR]

Several TAP streams may be concatenated (their plans add up). Only top-level test
lines count (``ok N - name``, ``not ok N - name``; a ``# SKIP``
directive makes a test skipped, ``# TODO`` makes a ``not ok`` pass). ``#`` lines after a
test are kept as its output. As for the pytest suites, a run that went wrong without
reporting a failing test counts as one failure: a setup error, a ``Bail out!``, fewer
tests than planned, no tests at all, or a non-zero exit status (e.g. 124 from
``timeout``). The exit status of this script is 0 unless it cannot write OUT_XML.
"""
import re
import sys
import xml.etree.ElementTree as ET

TEST = re.compile(r"^(not )?ok\b\s*(\d+)?\s*(?:-\s*)?(.*?)\s*(?:#\s*(SKIP|TODO)\b\s*(.*))?$",
                  re.IGNORECASE)
PLAN = re.compile(r"^1\.\.(\d+)")


def parse(lines):
    cases, planned, bailed = [], None, None
    for raw in lines:
        line = raw.rstrip("\n")
        m = PLAN.match(line)
        if m:
            # Concatenated TAP streams (one per test file) each bring their own plan.
            planned = (planned or 0) + int(m.group(1))
            continue
        if line.startswith("Bail out!"):
            bailed = line
            continue
        m = TEST.match(line)
        if m:
            not_ok, _num, name, directive, reason = m.groups()
            directive = (directive or "").upper()
            if directive == "SKIP":
                status = "skipped"
            elif not_ok and directive != "TODO":
                status = "failed"
            else:
                status = "passed"
            cases.append({"name": name or "(unnamed)", "status": status,
                          "reason": reason or "", "output": []})
            continue
        if line.startswith("#") and cases:
            cases[-1]["output"].append(line[1:].strip())
    return cases, planned, bailed


def main(argv):
    suite, tap_file, rc, out = argv[1], argv[2], int(argv[3]), argv[4]
    setup_error = argv[5] if len(argv) > 5 else ""
    try:
        with open(tap_file, encoding="utf-8", errors="replace") as fh:
            cases, planned, bailed = parse(fh)
    except OSError as e:
        cases, planned, bailed = [], None, None
        setup_error = setup_error or "no TAP output: %s" % e
    failed = sum(c["status"] == "failed" for c in cases)
    problems = []
    if setup_error:
        problems.append("setup: " + setup_error)
    if bailed:
        problems.append(bailed)
    if planned is not None and len(cases) < planned:
        problems.append("%d of %d planned tests did not run" % (planned - len(cases), planned))
    if not cases and not setup_error:
        problems.append("no tests ran")
    if rc != 0:
        problems.append("exit status %d" % rc)
    if problems and failed == 0:
        cases.append({"name": "(suite)", "status": "failed", "reason": "",
                      "output": problems})
    elif problems:
        print("conformance: %s: %s" % (suite, "; ".join(problems)), file=sys.stderr)

    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)))
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=c["name"])
        text = "\n".join(c["output"])
        if c["status"] == "failed":
            msg = c["output"][0] if c["output"] else "not ok"
            ET.SubElement(tc, "failure", message=msg).text = text
        elif c["status"] == "skipped":
            ET.SubElement(tc, "skipped", message=c["reason"] or "SKIP")
        elif text:
            ET.SubElement(tc, "system-out").text = text
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
