"""Barrier functions h(q) >= 0 and their discrete-time CBF rows for a velocity-controlled arm.

The arm integrates ``q_{k+1} = q_k + dt * dq``. For a barrier ``h`` with gain ``gamma`` in (0, 1]
the condition ``h(q_{k+1}) >= (1 - gamma) h(q_k)`` keeps ``h >= 0`` forever and lets ``h`` shrink
by at most the fraction ``gamma`` per step. Linearised, it is the row
``dt * grad_h . dq >= -gamma * h + eps``: ``eps`` (``linearization_margin_m``) absorbs the
second-order error of nonlinear barriers, and the filter re-checks the true ``h`` at the predicted
next state and raises ``eps`` where it was not enough.

All rows are returned in the form ``a . dq + s >= b`` (``s`` a slack, only on soft rows), scaled
so that ``|a| = 1``: every row then has the same units (rad/s) and one feasibility tolerance fits
all. Joint position and velocity limits are simple bounds ``lb <= dq <= ub``.

Hard (never relaxed): table, obstacles, joint position limits, joint velocity limits, EE speed
cap. Soft (slack with an exact penalty, used only when the hard rows leave no other choice): the
EE workspace box and the acceleration bound (a hard barrier must win over a smooth command). One
slack is shared by the six box faces and one by all acceleration rows.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from scipy.spatial import HalfspaceIntersection

from genpolicy_ros.safety.config import SafetyConfig, validate_obstacles

_AXES = 'xyz'


def fibonacci_directions(count: int) -> np.ndarray:
    """Return ``count`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    phi = np.pi * (1.0 + 5.0 ** 0.5) * i
    rho = np.sqrt(1.0 - z * z)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def inner_speed_polytope(max_speed: float, facets: int) -> tuple:
    """Return ``(normals (F, 3), offset)`` with ``{v : normals @ v <= offset}`` inside the ball.

    The polytope's vertices are enumerated exactly (half-space intersection), and the offset is
    scaled so that the farthest vertex sits on the sphere of radius ``max_speed``: any velocity
    the polytope admits is at most ``max_speed`` long.
    """
    normals = fibonacci_directions(facets)
    halfspaces = np.hstack([normals, -np.ones((facets, 1))])  # n . v - 1 <= 0
    vertices = HalfspaceIntersection(halfspaces, np.zeros(3)).intersections
    reach = float(np.max(np.linalg.norm(vertices, axis=1)))
    return normals, max_speed / reach


@dataclass
class BarrierRows:
    """The CBF rows of one state; see the module docstring for the row convention."""

    A: np.ndarray            # (m, nq) coefficients on dq, rows of unit norm (or zero)
    b: np.ndarray            # (m,)
    slack_index: np.ndarray  # (m,) index into the slack vector, -1 for hard rows
    scale: np.ndarray        # (m,) 1 / |a| applied to the raw row (to convert eps)
    lb: np.ndarray           # (nq,) lower bound on dq [rad/s]
    ub: np.ndarray           # (nq,) upper bound on dq [rad/s]
    h: np.ndarray            # (m_nl,) true barrier values of the nonlinear hard rows [m]
    gamma: np.ndarray        # (m_nl,) their gains
    workspace_h: np.ndarray  # (6,) EE box barrier values [m]
    joint_h: np.ndarray      # (2 * nq,) joint limit barrier values [rad], lower then upper


class BarrierSet:
    """Builds every barrier row of the filter from the robot model and :class:`SafetyConfig`.

    Row order (fixed until :meth:`set_obstacles`): table (TCP, then kept spheres), obstacles
    (obstacle-major, all spheres each), workspace (x_min, x_max, y_min, ... z_max), speed cap
    facets, acceleration (joint lower rows then upper rows). ``group_names`` / ``group_of_row``
    map rows to the readable names of :class:`~genpolicy_ros.safety.filter.BarrierReport`.
    """

    def __init__(self, model, config: SafetyConfig) -> None:
        self.model = model
        self.config = config
        self.nq = int(model.nq)
        self.dt = config.dt
        radii = np.asarray(model.sphere_radii, dtype=float)
        links = list(model.sphere_links)
        self.sphere_radii = radii
        self.sphere_links = links
        self.table_spheres = np.array(
            [i for i, link in enumerate(links) if link not in config.table.excluded_links],
            dtype=int)
        counts: dict = {}
        self.table_sphere_names: List[str] = []
        for i, link in enumerate(links):
            counts[link] = counts.get(link, -1) + 1
            if i in set(self.table_spheres.tolist()):
                self.table_sphere_names.append(f'table:{link}#{counts[link]}')
        self.speed_normals, self.speed_offset = inner_speed_polytope(
            config.speed_cap.max_speed_mps - config.speed_cap.margin_mps,
            config.speed_cap.facets)
        lim = model.limits
        margin = np.asarray(config.joint_limits.margin_rad, dtype=float)
        if margin.shape != (self.nq,):
            raise ValueError(f'joint_limits.margin_rad needs {self.nq} values, got {margin.size}')
        self.q_lower = np.asarray(lim.lower, dtype=float) + margin
        self.q_upper = np.asarray(lim.upper, dtype=float) - margin
        self.v_max = config.joint_velocity_scale * np.asarray(lim.velocity, dtype=float)
        self.a_max = config.acceleration_scale * np.asarray(lim.acceleration, dtype=float)
        self.joint_names = list(model.joint_names)
        self._ws_lower = np.asarray(config.workspace.lower_m, dtype=float)
        self._ws_upper = np.asarray(config.workspace.upper_m, dtype=float)
        obs = config.obstacles
        self.set_obstacles(obs.centers_m, obs.radii_m, obs.capsule_starts_m, obs.capsule_ends_m,
                           obs.capsule_radii_m)

    # ----------------------------------------------------------------------------------- layout
    def set_obstacles(self, centers: np.ndarray, radii: np.ndarray,
                      capsule_starts: Optional[np.ndarray] = None,
                      capsule_ends: Optional[np.ndarray] = None,
                      capsule_radii: Optional[np.ndarray] = None) -> None:
        """Replace the keep-out spheres (and capsules); changes the row layout."""
        centers = np.asarray(centers, dtype=float).reshape(-1, 3)
        radii = np.asarray(radii, dtype=float).reshape(-1)
        starts = np.zeros((0, 3)) if capsule_starts is None else np.asarray(
            capsule_starts, dtype=float).reshape(-1, 3)
        ends = np.zeros((0, 3)) if capsule_ends is None else np.asarray(
            capsule_ends, dtype=float).reshape(-1, 3)
        cradii = np.zeros(0) if capsule_radii is None else np.asarray(
            capsule_radii, dtype=float).reshape(-1)
        validate_obstacles(centers, radii, starts, ends, cradii)
        # A sphere is a capsule whose segment has zero length: one code path for both.
        self.obs_start = np.vstack([centers, starts])
        self.obs_axis = np.vstack([np.zeros_like(centers), ends - starts])
        self.obs_radius = np.concatenate([radii, cradii])
        self._build_layout()

    def obstacle_geometry(self) -> list:
        """Return ``[(start (3,), end (3,), radius), ...]`` of every obstacle, in report order.

        A sphere has ``start == end``; meant for RViz markers and logs.
        """
        return [(s.copy(), s + a, float(r))
                for s, a, r in zip(self.obs_start, self.obs_axis, self.obs_radius)]

    def _build_layout(self) -> None:
        n_obs = self.obs_radius.size
        n_sph = self.sphere_radii.size
        self.n_table = 1 + self.table_spheres.size
        self.n_obstacle = n_obs * n_sph
        self.n_nonlinear = self.n_table + self.n_obstacle
        self.n_speed = self.speed_normals.shape[0]
        self.n_rows = self.n_nonlinear + 6 + self.n_speed + 2 * self.nq
        # Two slacks: one shared by the six workspace faces, one by the acceleration rows. Per-row
        # slacks would say which joint needed it, but cost DAQP ~2x in a 20- instead of 9-variable
        # problem; the exact penalty still keeps both at zero whenever the hard rows allow it.
        self.n_slack = 2
        slack = -np.ones(self.n_rows, dtype=int)
        ws0 = self.n_nonlinear
        slack[ws0:ws0 + 6] = 0
        acc0 = ws0 + 6 + self.n_speed
        slack[acc0:] = 1
        self.slack_index = slack
        self.row_workspace = slice(ws0, ws0 + 6)
        self.row_speed = slice(ws0 + 6, acc0)
        self.row_accel = slice(acc0, self.n_rows)
        names = ['table:ee'] + self.table_sphere_names
        names += [f'obstacle:{k}' for k in range(n_obs)]
        names += [f'workspace:{a}_{s}' for a in _AXES for s in ('min', 'max')]
        names += ['speed_cap']
        names += [f'acceleration:{j}' for j in self.joint_names]
        group = list(range(self.n_table))
        group += [self.n_table + k for k in range(n_obs) for _ in range(n_sph)]
        g = self.n_table + n_obs
        group += [g + i for i in range(6)]
        group += [g + 6] * self.n_speed
        group += [g + 7 + j for j in range(self.nq)] * 2
        self.row_group_names = names
        # Constant parts of the barrier functions, computed once per layout.
        table = self.config.table
        self._table_offset = table.height_m + np.concatenate([
            [table.ee_margin_m], self.sphere_radii[self.table_spheres] + table.sphere_margin_m])
        length2 = np.einsum('ok,ok->o', self.obs_axis, self.obs_axis)
        self._obs_axis_scaled = self.obs_axis / np.where(length2 > 0.0, length2, 1.0)[:, None]
        self._obs_offset = (self.obs_radius[:, None] + self.sphere_radii[None, :]
                            + self.config.obstacles.margin_m)
        self._accel_rows = np.vstack([np.eye(self.nq), -np.eye(self.nq)])
        self._gains = np.concatenate([np.full(self.n_table, table.gain),
                                      np.full(self.n_obstacle, self.config.obstacles.gain)])
        self.group_of_row = np.asarray(group, dtype=int)
        self.joint_group_names = (
            [f'joint_limit:{j}_lower' for j in self.joint_names]
            + [f'joint_limit:{j}_upper' for j in self.joint_names]
            + [f'joint_velocity:{j}' for j in self.joint_names])

    # ------------------------------------------------------------------------------ evaluation
    def nonlinear_values(self, kin, with_gradient: bool = True) -> tuple:
        """Return ``(h (m_nl,), grad (m_nl, nq) or None)`` of the table and obstacle barriers [m].

        ``kin`` needs ``ee_pos``/``sphere_centers`` (and ``ee_jac``/``sphere_jacs`` for the
        gradient).
        """
        centers = np.asarray(kin.sphere_centers, dtype=float)
        nt = self.n_table
        h = np.empty(self.n_nonlinear)
        h[0] = kin.ee_pos[2]
        h[1:nt] = centers[self.table_spheres, 2]
        h[:nt] -= self._table_offset
        if self.obs_radius.size:
            # Closest point of each obstacle segment to each sphere centre: (O, S, 3).
            rel = centers[None, :, :] - self.obs_start[:, None, :]
            t = np.einsum('osk,ok->os', rel, self._obs_axis_scaled)
            np.clip(t, 0.0, 1.0, out=t)
            diff = rel - t[:, :, None] * self.obs_axis[:, None, :]
            dist = np.sqrt(np.einsum('osk,osk->os', diff, diff))
            h[nt:] = (dist - self._obs_offset).reshape(-1)
        if not with_gradient:
            return h, None
        jacs = np.asarray(kin.sphere_jacs, dtype=float)
        grad = np.empty((self.n_nonlinear, self.nq))
        grad[0] = kin.ee_jac[2]
        grad[1:nt] = jacs[self.table_spheres, 2, :]
        if self.obs_radius.size:
            # The distance gradient is the unit normal (the closest point moves orthogonally).
            far = dist > 1e-12
            normal = np.where(far[:, :, None], diff / np.where(far, dist, 1.0)[:, :, None],
                              np.array([0.0, 0.0, 1.0]))
            grad[nt:] = np.einsum('osk,skj->osj', normal, jacs).reshape(-1, self.nq)
        return h, grad

    def nonlinear_gains(self) -> np.ndarray:
        """Return the gain of every nonlinear row (table rows, then obstacle rows)."""
        return self._gains

    def workspace_values(self, ee_pos: np.ndarray) -> np.ndarray:
        """Return the six EE box barriers (x_min, x_max, y_min, ..., z_max) [m]."""
        out = np.empty(6)
        out[0::2] = ee_pos - self._ws_lower
        out[1::2] = self._ws_upper - ee_pos
        return out

    def joint_values(self, q: np.ndarray) -> np.ndarray:
        """Return the joint limit barriers [rad]: lower ones then upper ones, margin included."""
        return np.concatenate([q - self.q_lower, self.q_upper - q])

    def true_values(self, q: np.ndarray, kin=None) -> dict:
        """Return every position barrier by name, evaluated exactly at ``q`` (for tests/logs).

        Obstacle groups report their minimum over the robot spheres.
        """
        kin = self.model.kinematics(q) if kin is None else kin
        h, _ = self.nonlinear_values(kin)
        out = dict(zip(['table:ee'] + self.table_sphere_names, h[:self.n_table]))
        n_sph = self.sphere_radii.size
        for k in range(self.obs_radius.size):
            first = self.n_table + k * n_sph
            out[f'obstacle:{k}'] = float(np.min(h[first:first + n_sph]))
        for name, value in zip(self.row_group_names[self.n_table + self.obs_radius.size:],
                               self.workspace_values(np.asarray(kin.ee_pos))):
            out[name] = value
        for name, value in zip(self.joint_group_names, self.joint_values(q)):
            out[name] = value
        return {k: float(v) for k, v in out.items()}

    # ------------------------------------------------------------------------------------ rows
    def rows(self, q: np.ndarray, kin, dq_prev: np.ndarray, eps: Optional[np.ndarray] = None,
             speed_offset: Optional[float] = None, trust: float = 1.0) -> BarrierRows:
        """Return the CBF rows at configuration ``q`` (kinematics ``kin``).

        ``dq_prev`` is the previous command [rad/s] (acceleration bound); ``eps`` (m_nl + 6,) the
        linearisation margin [m] of the table/obstacle rows then the six workspace rows,
        ``linearization_margin_m`` everywhere by default;
        ``speed_offset`` [m/s] the facet offset of the speed polytope; ``trust`` in (0, 1] scales
        the joint velocity bounds into a trust region (the filter shrinks it when the
        linearisation fails at the predicted next state: its error grows with ``|dq|^2``).
        """
        dt = self.dt
        cfg = self.config
        nq = self.nq
        A = np.empty((self.n_rows, nq))
        b = np.empty(self.n_rows)
        h_nl, g_nl = self.nonlinear_values(kin)
        gamma = self.nonlinear_gains()
        if eps is None:
            eps = np.full(self.n_nonlinear + 6, cfg.linearization_margin_m)
        m_nl = self.n_nonlinear
        A[:m_nl] = g_nl
        b[:m_nl] = (-gamma * h_nl + eps[:m_nl]) / dt
        ee_pos = np.asarray(kin.ee_pos, dtype=float)
        jv = np.asarray(kin.ee_jac, dtype=float)[:3]
        h_ws = self.workspace_values(ee_pos)
        ws = self.row_workspace
        A[ws.start:ws.stop:2] = jv      # x_min, y_min, z_min rows
        A[ws.start + 1:ws.stop:2] = -jv  # x_max, y_max, z_max rows
        b[ws] = (-cfg.workspace.gain * h_ws + eps[m_nl:]) / dt
        A[self.row_speed] = -self.speed_normals @ jv
        b[self.row_speed] = -(self.speed_offset if speed_offset is None else speed_offset)
        acc = self.row_accel
        A[acc] = self._accel_rows
        step = self.a_max * dt
        b[acc] = np.concatenate([dq_prev - step, -(dq_prev + step)])
        norms = np.sqrt(np.einsum('ij,ij->i', A, A))
        # Rows with no authority (a sphere on a link the joints cannot move) stay unscaled.
        scale = np.where(norms > 1e-9, 1.0 / np.maximum(norms, 1e-9), 1.0)
        A *= scale[:, None]
        b *= scale
        h_joint = self.joint_values(q)
        gain = cfg.joint_limits.gain
        lb = np.maximum(-self.v_max, -gain * h_joint[:nq] / dt)
        ub = np.minimum(self.v_max, gain * h_joint[nq:] / dt)
        if trust < 1.0:
            # Shrink toward zero, never past a bound a joint limit barrier imposes.
            lb_t = np.maximum(lb, -trust * self.v_max)
            ub_t = np.minimum(ub, trust * self.v_max)
            keep = lb_t <= ub_t
            lb = np.where(keep, lb_t, lb)
            ub = np.where(keep, ub_t, ub)
        return BarrierRows(A=A, b=b, slack_index=self.slack_index, scale=scale, lb=lb, ub=ub,
                           h=h_nl, gamma=gamma, workspace_h=h_ws, joint_h=h_joint)

    def group_names(self) -> Sequence[str]:
        """Return every report name, in report order."""
        return list(self.row_group_names) + list(self.joint_group_names)
