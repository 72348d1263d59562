"""pytest fixtures for the pika conformance scenarios (helpers live in helpers.py)."""
import pytest

from helpers import Names, connect


@pytest.fixture
def names():
    n = Names()
    yield n
    n.cleanup()


@pytest.fixture
def conn_factory():
    """Open extra connections; all are closed at teardown."""
    opened = []

    def make(**kwargs):
        c = connect(**kwargs)
        opened.append(c)
        return c

    yield make
    for c in opened:
        if c.is_open:
            try:
                c.close()
            except Exception:
                pass


@pytest.fixture
def conn(conn_factory):
    return conn_factory()


@pytest.fixture
def ch(conn):
    return conn.channel()
