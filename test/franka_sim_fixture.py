"""The franka-sim FCI server for the protocol tests (registered in conftest.py).

libfranka's port 1337 is fixed, so one server per machine: the session owns the set-up (the
virtualenv check, the MJCF of the project's arm) and each test module that needs the server
starts it and stops it, process group and all, when the module is done. One at a time, as the
modules run one after the other, and the simulator does not load the machine while the rest of
the suite runs. A machine-wide lock (FrankaSimServer) serialises concurrent test sessions.
Tests skip with the reason only when franka-sim's virtualenv is genuinely missing;
``scripts/setup_venv.sh`` creates it.
"""

import pytest

from genpolicy_ros.drivers.franka_sim_server import FrankaSimServer, FrankaSimUnavailable


@pytest.fixture(scope='session')
def franka_sim_workdir(tmp_path_factory):
    """Return the session's franka-sim work directory, with the MJCF written once."""
    server = FrankaSimServer(workdir=tmp_path_factory.mktemp('franka_sim'))
    try:
        server.check_installed()
    except FrankaSimUnavailable as exc:
        pytest.skip(f'franka-sim is not installed: {exc}')
    server.write_mjcf()
    return server.workdir


@pytest.fixture(scope='module')
def franka_sim(franka_sim_workdir):
    """Return a running :class:`FrankaSimServer` on 127.0.0.1 (arm + gripper)."""
    server = FrankaSimServer(workdir=franka_sim_workdir)
    server.start()
    try:
        yield server
    finally:
        pgid = server.pid
        server.stop()
        assert pgid is None or not FrankaSimServer._group_alive(pgid), \
            f'franka-sim process group {pgid} survived stop()'
