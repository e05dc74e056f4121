"""RL fine-tuning of the flow policy with the safety filter in the loop (``genpolicy-finetune``).

DPPO-style (Ren et al. 2024): the executed chunk's last Euler steps are Gaussian
(:mod:`genpolicy_ros.policy.dppo`), rollouts run the lock-step stack of ``genpolicy-eval``
(CBF filter on, monitor gating; :mod:`genpolicy_ros.policy.finetune_rollout`) in parallel
processes, and PPO with a learned value function and GAE over decisions (one decision = one
executed chunk) updates the velocity network. The image and observation encoders stay frozen:
the value network reads their (detached) embedding, and the monitor's camera-novelty model,
fitted on that encoder, stays valid for the fine-tuned policy.

Reward per chunk: progress of the cube toward the goal, minus the filter's correction, minus a
penalty for a monitor HOLD, plus a success bonus; so the policy is pushed to need fewer
interventions, not to lean on them. Every default is in ``config/finetune.yaml``.

Writes to ``--out``: ``policy.pt`` (a checkpoint ``genpolicy-eval --checkpoint`` loads),
``state.pt`` (resume), ``log.csv`` and ``log.json`` (per iteration), ``progress.png``
(success rate and intervention per iteration). Re-running the same command resumes.
"""

import argparse
import csv
import dataclasses
import json
from pathlib import Path
import shlex
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from genpolicy_ros.config_io import build_config, read_core_parameters
from genpolicy_ros.policy.checkpoint import atomic_save, EXPORT_FORMAT, load_for_inference
from genpolicy_ros.policy.config import PolicyRuntimeConfig
from genpolicy_ros.policy.dppo import (chain_log_probs, gae, noise_cholesky, ppo_clip_objective,
                                       ValueMLP)
from genpolicy_ros.policy.finetune_rollout import EpisodeRollout, RolloutWorker
from genpolicy_ros.policy.policy import resolve_checkpoint
from genpolicy_ros.policy.worker_pool import WorkerPool
from genpolicy_ros.sim.task import EVAL_SEED_START

CONFIG_FILE = 'finetune.yaml'
NODE_NAME = 'genpolicy_finetune'
PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class ExplorationConfig:
    """Which Euler steps are Gaussian, and their std (normalised action units)."""

    stochastic_steps: int
    sigma: float
    correlation_steps: float


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights of the per-chunk reward terms."""

    progress_per_m: float
    success_bonus: float
    intervention_per_mps: float
    hold_penalty: float


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO, GAE and value-function settings."""

    gamma: float
    gae_lambda: float
    clip: float
    actor_lr: float
    critic_lr: float
    epochs: int
    minibatch: int
    max_grad_norm: float
    target_kl: float
    value_hidden: int
    critic_warmup_iterations: int


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Everything under ``genpolicy_finetune.ros__parameters`` of ``config/finetune.yaml``."""

    checkpoint: str
    task_variant: str
    monitor: str
    iterations: int
    episodes_per_iteration: int
    workers: int
    first_seed: int
    max_decisions: int
    exploration: ExplorationConfig
    reward: RewardConfig
    ppo: PPOConfig
    seed: int
    threads: int

    @classmethod
    def load(cls, path: Optional[PathLike] = None, **overrides: Any) -> 'FinetuneConfig':
        """Read the YAML (or ``path``); ``overrides`` replace top-level fields."""
        params = read_core_parameters(CONFIG_FILE, NODE_NAME, path)
        params.update({k: v for k, v in overrides.items() if v is not None})
        return build_config(cls, params)

    def replace(self, **changes: Any) -> 'FinetuneConfig':
        """Return a copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """Return a plain nested dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Batch:
    """One iteration's rollouts, flattened over decisions."""

    obs_cond: torch.Tensor       # (N, C)
    chains: torch.Tensor         # (N, K + 1, H, A)
    time_fraction: torch.Tensor  # (N,)
    rewards: np.ndarray          # (N,)
    dones: np.ndarray            # (N,) the episode ends after this decision

    @classmethod
    def from_rollouts(cls, rollouts: List[EpisodeRollout]) -> 'Batch':
        """Concatenate episodes (those with at least one decision)."""
        eps = [r for r in rollouts if r.decisions > 0]
        if not eps:
            raise ValueError('no decisions in this batch of rollouts')
        dones = np.concatenate([np.arange(r.decisions) == r.decisions - 1 for r in eps])
        return cls(torch.from_numpy(np.concatenate([r.obs_cond for r in eps])),
                   torch.from_numpy(np.concatenate([r.chains for r in eps])),
                   torch.from_numpy(np.concatenate([r.time_fraction for r in eps])),
                   np.concatenate([r.rewards for r in eps]), dones)

    def __len__(self) -> int:
        return len(self.rewards)


class Learner:
    """The trainable parts (velocity network, value network) and their optimisers."""

    def __init__(self, cfg: FinetuneConfig, steps: int) -> None:
        self.cfg = cfg
        self.steps = int(steps)
        path = resolve_checkpoint(cfg.checkpoint)
        self.net, _, self.info = load_for_inference(path)
        self.base = torch.load(path, map_location='cpu', weights_only=False)
        for p in self.net.velocity.parameters():
            p.requires_grad_(True)
        torch.manual_seed(cfg.seed)
        self.value = ValueMLP(self.net.cfg.obs_cond_dim, cfg.ppo.value_hidden)
        self.actor_opt = torch.optim.Adam(self.net.velocity.parameters(), lr=cfg.ppo.actor_lr)
        self.critic_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.ppo.critic_lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        ex = cfg.exploration
        self.chol = (noise_cholesky(self.net.cfg.horizon, ex.correlation_steps)
                     if ex.correlation_steps > 0.0 else None)

    def log_probs(self, batch: Batch, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, stochastic steps) log probabilities of the recorded chains (differentiable)."""
        cond, chains = batch.obs_cond, batch.chains
        if idx is not None:
            cond, chains = cond[idx], chains[idx]
        ex = self.cfg.exploration
        return chain_log_probs(self.net, cond, chains, self.steps, ex.stochastic_steps,
                               ex.sigma, self.chol)

    def update(self, batch: Batch, update_actor: bool) -> Dict[str, float]:
        """One PPO update on ``batch``; returns losses and the surrogate before/after."""
        ppo = self.cfg.ppo
        with torch.no_grad():
            values = self.value(batch.obs_cond, batch.time_fraction).numpy()
        next_values = np.append(values[1:], 0.0)
        adv, returns = gae(batch.rewards, values, next_values, batch.dones, ppo.gamma,
                           ppo.gae_lambda)
        adv_t = torch.as_tensor((adv - adv.mean()) / (adv.std() + 1e-8), dtype=torch.float32)
        ret_t = torch.as_tensor(returns, dtype=torch.float32)
        with torch.no_grad():
            logp_old = self.log_probs(batch)
        before, _ = ppo_clip_objective(logp_old, logp_old, adv_t, ppo.clip)
        n = len(batch)
        kl, clip_frac, value_losses, actor_steps = 0.0, 0.0, [], 0
        stop_actor = not update_actor
        for _ in range(ppo.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, ppo.minibatch):
                idx = order[start:start + ppo.minibatch]
                if not stop_actor:
                    obj, stats = ppo_clip_objective(self.log_probs(batch, idx), logp_old[idx],
                                                    adv_t[idx], ppo.clip)
                    self.actor_opt.zero_grad()
                    (-obj).backward()
                    torch.nn.utils.clip_grad_norm_(self.net.velocity.parameters(),
                                                   ppo.max_grad_norm)
                    self.actor_opt.step()
                    actor_steps += 1
                    kl, clip_frac = stats['approx_kl'], stats['clip_fraction']
                    stop_actor = kl > ppo.target_kl
                v_loss = torch.nn.functional.mse_loss(
                    self.value(batch.obs_cond[idx], batch.time_fraction[idx]), ret_t[idx])
                self.critic_opt.zero_grad()
                v_loss.backward()
                self.critic_opt.step()
                value_losses.append(float(v_loss.detach()))
        with torch.no_grad():
            after, stats = ppo_clip_objective(self.log_probs(batch), logp_old, adv_t, ppo.clip)
        return {'surrogate_before': float(before), 'surrogate_after': float(after),
                'approx_kl': stats['approx_kl'], 'clip_fraction': stats['clip_fraction'],
                'last_minibatch_kl': kl, 'last_minibatch_clip_fraction': clip_frac,
                'actor_steps': actor_steps, 'value_loss': float(np.mean(value_losses)),
                'explained_variance': _explained_variance(values, returns)}

    def velocity_weights(self) -> Dict[str, torch.Tensor]:
        """Return a detached copy of the velocity weights (sent to the rollout workers)."""
        return {k: v.detach().clone() for k, v in self.net.velocity.state_dict().items()}

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume."""
        return {'velocity': self.net.velocity.state_dict(), 'value': self.value.state_dict(),
                'actor_opt': self.actor_opt.state_dict(),
                'critic_opt': self.critic_opt.state_dict(),
                'generator': self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.net.velocity.load_state_dict(state['velocity'])
        self.value.load_state_dict(state['value'])
        self.actor_opt.load_state_dict(state['actor_opt'])
        self.critic_opt.load_state_dict(state['critic_opt'])
        self.generator.set_state(state['generator'])
        # The optimiser state carries its learning rate: the config's value wins on resume.
        for opt, lr in ((self.actor_opt, self.cfg.ppo.actor_lr),
                        (self.critic_opt, self.cfg.ppo.critic_lr)):
            for group in opt.param_groups:
                group['lr'] = lr

    def export(self, path: PathLike, command: str, iteration: int) -> None:
        """Write the policy as a shipped checkpoint (float32 weights) loadable for inference."""
        base = self.base
        atomic_save({
            'format': EXPORT_FORMAT,
            'weights': {k: v.detach().clone().float() if v.is_floating_point() else v.clone()
                        for k, v in self.net.state_dict().items()},
            'policy_config': base['policy_config'],
            'normalizer': base['normalizer'],
            'step': int(base.get('step', 0)),
            'command': f'{command} ; fine-tuned from {self.cfg.checkpoint}: '
                       f'{self.info.get("command", "")}',
            'demo_meta': base.get('demo_meta', {}),
            'val_loss': [],
            'finetune': {'iterations': iteration, 'config': self.cfg.to_dict()},
        }, path)


def _explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    var = float(np.var(returns))
    return float(1.0 - np.var(returns - values) / var) if var > 0 else 0.0


def rollout_metrics(rollouts: List[EpisodeRollout]) -> Dict[str, float]:
    """Success, intervention and monitor figures of one iteration's episodes."""
    steps = [x for r in rollouts for x in r.intervention_mps]
    terms = {k: float(np.mean([r.reward_terms[k] for r in rollouts]))
             for k in rollouts[0].reward_terms}
    return {
        'episodes': len(rollouts),
        'success_rate': float(np.mean([r.success for r in rollouts])),
        'mean_intervention_mps': float(np.mean(steps)) if steps else 0.0,
        'intervention_rate': float(np.mean(np.asarray(steps) > 1e-3)) if steps else 0.0,
        'hold_rate': float(np.mean([r.hold for r in rollouts])),
        'mean_final_distance_m': float(np.mean([r.final_distance_m for r in rollouts])),
        'mean_return': float(np.mean([r.rewards.sum() for r in rollouts])),
        'decisions': int(sum(r.decisions for r in rollouts)),
        'control_steps': int(sum(r.control_steps for r in rollouts)),
        'filter_calls': int(sum(r.filter_calls for r in rollouts)),
        **{f'reward_{k}': v for k, v in terms.items()},
    }


def write_logs(history: List[Dict[str, Any]], out_dir: Path) -> None:
    """Write ``log.json``, ``log.csv`` and ``progress.png`` from the per-iteration history."""
    with open(out_dir / 'log.json', 'w', encoding='utf-8') as f:
        json.dump(history, f, indent=1)
    keys = list(history[0])
    with open(out_dir / 'log.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(history)
    plot_progress(history, out_dir / 'progress.png')


def plot_progress(history: List[Dict[str, Any]], path: Path) -> None:
    """Plot success rate (95% Wilson band) and filter intervention per iteration."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from genpolicy_ros.evaluation import wilson_interval
    it = [h['iteration'] for h in history]
    success = [h['success_rate'] for h in history]
    band = [wilson_interval(int(round(h['success_rate'] * h['episodes'])), h['episodes'])
            for h in history]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.fill_between(it, [b[0] for b in band], [b[1] for b in band], alpha=0.2)
    ax1.plot(it, success, 'o-', label='success rate (rollouts, exploring)')
    ax1.set_ylabel('success rate')
    ax1.set_ylim(0.0, 1.0)
    ax1.legend(loc='upper left')
    ax2.plot(it, [1000 * h['mean_intervention_mps'] for h in history], 'o-', color='C3',
             label='mean filter correction [mm/s]')
    ax2.plot(it, [100 * h['intervention_rate'] for h in history], 's--', color='C1',
             label='control steps corrected > 1 mm/s [%]')
    ax2.set_xlabel('iteration')
    ax2.legend(loc='upper left')
    fig.suptitle('genpolicy-finetune: rollouts with CBF filter and monitor in the loop')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finetune(cfg: FinetuneConfig, out_dir: PathLike, command: str = '',
             progress: bool = True, resume: bool = True) -> List[Dict[str, Any]]:
    """Run (or resume) the fine-tuning in ``out_dir``; return the per-iteration history."""
    from tqdm import tqdm
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_seed = cfg.first_seed + cfg.iterations * cfg.episodes_per_iteration
    if cfg.first_seed < 0 or last_seed > EVAL_SEED_START:
        raise ValueError(f'rollout seeds {cfg.first_seed}..{last_seed} must stay below the '
                         f'held-out seeds ({EVAL_SEED_START}+)')
    torch.set_num_threads(cfg.threads)
    steps = PolicyRuntimeConfig.load().flow_steps
    learner = Learner(cfg, steps)
    history: List[Dict[str, Any]] = []
    state_path = out / 'state.pt'
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location='cpu', weights_only=False)
        learner.load_state_dict(state['learner'])
        history = state['history']
    start = len(history)
    bar = tqdm(range(start, cfg.iterations), desc='finetune', unit='it', initial=start,
               total=cfg.iterations, disable=not progress)
    t_start = time.monotonic()
    with WorkerPool(RolloutWorker, (cfg,), cfg.workers) as pool:
        for it in bar:
            t0 = time.monotonic()
            first = cfg.first_seed + it * cfg.episodes_per_iteration
            weights = learner.velocity_weights()
            tasks = [(it, weights, first + i) for i in range(cfg.episodes_per_iteration)]
            rollouts = sorted(pool.imap_unordered(tasks), key=lambda r: r.seed)
            t_roll = time.monotonic() - t0
            metrics = rollout_metrics(rollouts)
            update = learner.update(Batch.from_rollouts(rollouts),
                                    update_actor=it >= cfg.ppo.critic_warmup_iterations)
            row = {'iteration': it + 1, 'first_seed': first, **metrics, **update,
                   'rollout_s': t_roll, 'iteration_s': time.monotonic() - t0}
            history.append(row)
            learner.export(out / 'policy.pt', command, it + 1)
            atomic_save({'learner': learner.state_dict(), 'history': history,
                         'config': cfg.to_dict(), 'command': command}, state_path)
            write_logs(history, out)
            bar.set_postfix(success=f"{row['success_rate']:.2f}",
                            interv=f"{1000 * row['mean_intervention_mps']:.1f}mm/s",
                            kl=f"{row['approx_kl']:.3f}")
            if progress:
                tqdm.write(f"it {it + 1:3d}: success {row['success_rate']:.2f} "
                           f"intervention {row['mean_intervention_mps']:.4f} m/s "
                           f"hold {row['hold_rate']:.2f} return {row['mean_return']:+.3f} "
                           f"surrogate {row['surrogate_before']:+.4f}->"
                           f"{row['surrogate_after']:+.4f} kl {row['approx_kl']:.4f} "
                           f"ev {row['explained_variance']:+.2f} "
                           f"({row['rollout_s']:.0f}+{row['iteration_s'] - row['rollout_s']:.0f}"
                           f" s, {time.monotonic() - t_start:.0f} s total)")
    bar.close()
    return history


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='genpolicy-finetune', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', type=Path, required=True,
                   help='run directory (policy.pt, state.pt, log.csv/json, progress.png); '
                        'an existing run there is resumed')
    p.add_argument('--config', type=Path, default=None,
                   help='YAML with a genpolicy_finetune block (default: config/finetune.yaml)')
    p.add_argument('--checkpoint', default=None, help='starting policy')
    p.add_argument('--task', dest='task_variant', default=None, help='task variant')
    p.add_argument('--monitor', choices=('gate', 'observe', 'off'), default=None)
    p.add_argument('--iterations', type=int, default=None)
    p.add_argument('--episodes-per-iteration', type=int, default=None)
    p.add_argument('--workers', type=int, default=None)
    p.add_argument('--first-seed', type=int, default=None)
    p.add_argument('--max-decisions', type=int, default=None)
    p.add_argument('--no-resume', action='store_true', help='start over even if state.pt exists')
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``genpolicy-finetune``."""
    args = _parse(argv)
    cfg = FinetuneConfig.load(
        args.config, checkpoint=args.checkpoint, task_variant=args.task_variant,
        monitor=args.monitor, iterations=args.iterations,
        episodes_per_iteration=args.episodes_per_iteration, workers=args.workers,
        first_seed=args.first_seed, max_decisions=args.max_decisions)

    def _interrupt(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    command = 'genpolicy-finetune ' + ' '.join(shlex.quote(a) for a in
                                               (sys.argv[1:] if argv is None else argv))
    try:
        history = finetune(cfg, args.out, command, resume=not args.no_resume)
    except KeyboardInterrupt:
        print('\nstopped: the last finished iteration is saved; rerun to resume', flush=True)
        return 1
    if history:
        last = history[-1]
        print(f"iterations={len(history)} success_rate={last['success_rate']:.4f} "
              f"mean_intervention={last['mean_intervention_mps']:.6f} "
              f"policy={Path(args.out) / 'policy.pt'}", flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
