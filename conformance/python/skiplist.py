"""pytest plugin: skip the tests listed in the file named by $CONFORMANCE_SKIP_FILE.

File format: one test id per line, optionally followed by ``# reason``;
blank lines and lines starting with ``#`` are ignored.  An id matches a
collected test when it equals the pytest node id, equals the node id with the
directory part of the file path removed (``test_x.py::test_y[p]``), or names
the test without its parameters (``test_x.py::test_y`` skips every
``test_x.py::test_y[...]``).
"""
import os
import warnings

import pytest


def _load(path):
    entries = {}
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            test_id, _, reason = line.partition("#")
            test_id = test_id.strip()
            if test_id:
                entries[test_id] = reason.strip() or "listed in %s" % os.path.basename(path)
    return entries


def _candidates(nodeid):
    path, sep, rest = nodeid.partition("::")
    short = os.path.basename(path) + sep + rest
    out = {nodeid, short}
    for n in (nodeid, short):
        if n.endswith("]") and "[" in n:
            out.add(n[:n.index("[")])
    return out


def pytest_collection_modifyitems(config, items):
    path = os.environ.get("CONFORMANCE_SKIP_FILE")
    if not path or not os.path.exists(path):
        return
    entries = _load(path)
    used = set()
    for item in items:
        for cand in _candidates(item.nodeid):
            if cand in entries:
                used.add(cand)
                item.add_marker(pytest.mark.skip(reason="skip list: " + entries[cand]))
                break
    for unused in sorted(set(entries) - used):
        warnings.warn("skip list %s: no collected test matches %r" % (path, unused))
