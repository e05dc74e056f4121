"""Train the flow-matching policy on recorded demonstrations (console script ``genpolicy-train``).

Example::

    genpolicy-train --demos data/demos/push_v1 --out runs/push_flow_v1 --iters 20000
        --batch-size 64 --seed 0 --threads 2

CPU only, seeded, resumable (``--resume`` continues from ``<out>/checkpoint.pt``: weights, EMA,
optimiser, schedule, step and random-generator states). Every ``checkpoint_every_iters`` it
writes ``checkpoint.pt``, ``train_config.yaml`` and ``loss.png``; SIGINT/SIGTERM write a last
checkpoint before exiting, so stopping a run early loses nothing.
"""

import argparse
import copy
import math
from pathlib import Path
import shlex
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml

from genpolicy_ros.policy.checkpoint import atomic_save
from genpolicy_ros.paths import config_path
from genpolicy_ros.policy.config import (PolicyConfig, read_ros_params, TRAIN_NODE,
                                         TRAIN_YAML, TrainConfig)
from genpolicy_ros.policy.dataset import ChunkDataset, load_demos, Normalizer, \
    POLICY_LABELS
from genpolicy_ros.policy.flow import flow_matching_loss
from genpolicy_ros.policy.network import (count_parameters, FlowPolicyNet, images_to_tensor,
                                          random_shift)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line; unset options fall back to the training YAML."""
    p = argparse.ArgumentParser(description='Train the flow-matching push policy (CPU).')
    p.add_argument('--demos', required=True, nargs='+',
                   help='demo directories (meta.json + episode_*.npz each), e.g. the original '
                        'demos plus genpolicy-collect rounds')
    p.add_argument('--out', required=True, help='run directory (checkpoint.pt, loss.png, ...)')
    p.add_argument('--iters', type=int, help='total optimiser steps')
    p.add_argument('--batch-size', type=int)
    p.add_argument('--learning-rate', type=float,
                   help='peak learning rate (e.g. lower it to fine-tune)')
    p.add_argument('--seed', type=int)
    p.add_argument('--threads', type=int, help='torch intra-op threads')
    p.add_argument('--resume', action='store_true', help='continue from <out>/checkpoint.pt')
    p.add_argument('--init-from', help='start a NEW run from this checkpoint\'s weights, model '
                                       'config and normaliser (fine-tuning; fresh optimiser)')
    p.add_argument('--add-goal-input', action='store_true',
                   help='with --init-from a checkpoint without goal input: add the goal input '
                        '(goal_dim 2), its weights zero, so training starts from the source '
                        'policy\'s behaviour')
    p.add_argument('--policy-labels', choices=POLICY_LABELS,
                   help='chunk labels of policy-driven (DAgger) episodes (default: YAML)')
    p.add_argument('--config', help='training YAML (default: config/train_policy.yaml)')
    p.add_argument('--max-episodes', type=int, help='use only the first N episodes')
    p.add_argument('--checkpoint-every', type=int, help='iterations between checkpoints')
    p.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    return p.parse_args(argv)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def with_goal_input(cfg: PolicyConfig, normalizer: Normalizer, train_set: ChunkDataset
                    ) -> Tuple[PolicyConfig, Normalizer]:
    """Return ``cfg`` with ``goal_dim`` 2 and ``normalizer`` with the goal's min-max appended.

    The source's action and EE stats stay (its weights were trained in their scale); only the
    new goal columns are fitted, on ``train_set`` (built with the goal input).
    """
    raw = train_set.get(np.arange(len(train_set)), with_images=False)['proprio']
    stats = normalizer.state_dict()
    p = cfg.proprio_dim
    stats['proprio_min'] = list(stats['proprio_min'][:p]) + raw[:, p:].min(0).tolist()
    stats['proprio_max'] = list(stats['proprio_max'][:p]) + raw[:, p:].max(0).tolist()
    return PolicyConfig.from_dict(dict(cfg.to_dict(), goal_dim=2)), Normalizer(stats)


def widen_for_goal(weights: Dict[str, torch.Tensor], goal_dim: int) -> Dict[str, torch.Tensor]:
    """Give the encoder's first layer ``goal_dim`` more inputs (the last ones), weights zero.

    The goal follows the EE xy at the end of the encoder's input, so with zero weights the
    widened network computes exactly what the source did.
    """
    key = 'obs_encoder.mlp.0.weight'
    w = weights[key]
    out = dict(weights)
    out[key] = torch.cat([w, torch.zeros(w.shape[0], goal_dim, dtype=w.dtype)], dim=1)
    return out


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Exponential moving average of the parameters (buffers are copied)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def validation_metrics(net: FlowPolicyNet, val: ChunkDataset, normalizer: Normalizer,
                       batch_size: int, n_batches: int, seed: int) -> Tuple[float, float]:
    """Return (flow loss, executed-step error [m]) on fixed validation rows and noise.

    The error is the mean distance between the first ``n_action_steps`` targets of a chunk
    sampled with 2 Euler steps and the expert's, in metres: an interpretable open-loop figure.
    """
    net.eval()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    losses, errors = [], []
    n_exec = net.cfg.n_action_steps
    for _ in range(n_batches):
        rows = rng.integers(0, len(val), size=batch_size)
        b = val.batch(rows, normalizer)
        images = images_to_tensor(b['images'])
        losses.append(float(flow_matching_loss(net, b['action'], images, b['proprio'], gen)))
        cond = net.encode(images, b['proprio'])
        x = torch.randn(b['action'].shape, generator=gen)
        for k in range(2):
            x = x + 0.5 * net(x, torch.full((len(rows),), 0.5 * k), cond)
        pred = normalizer.unnormalize('action', x[:, :n_exec].numpy())
        true = normalizer.unnormalize('action', b['action'][:, :n_exec].numpy())
        errors.append(float(np.linalg.norm(pred - true, axis=-1).mean()))
    net.train()
    return float(np.mean(losses)), float(np.mean(errors))


def plot_losses(history: Dict[str, List[float]], path: Path) -> None:
    """Write the loss curve PNG (train loss smoothed, validation loss of the EMA weights)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    if history['train_step']:
        ax.plot(history['train_step'], history['train_loss'], label='train (mean per log)')
    if history['val_step']:
        ax.plot(history['val_step'], history['val_loss'], 'o-', label='val (EMA weights)')
    ax.set_yscale('log')
    ax.set_xlabel('iteration')
    ax.set_ylabel('flow-matching loss')
    ax.grid(True, alpha=0.3)
    ax.legend(loc='upper left')
    errors = history.get('val_action_err_m', [])
    if errors:
        ax2 = ax.twinx()
        ax2.plot(history['val_step'][-len(errors):], [1e3 * e for e in errors], 's--',
                 color='tab:green', label='val executed-step error [mm]')
        ax2.set_ylabel('error [mm]')
        ax2.legend(loc='upper right')
    fig.tight_layout()
    tmp = path.with_name(path.stem + '.tmp.png')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


class Trainer:
    """The training state and loop (a class so tests can drive a few steps)."""

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt_file = self.out / 'checkpoint.pt'
        resume = None
        if args.resume and ckpt_file.is_file():
            resume = torch.load(ckpt_file, map_location='cpu', weights_only=False)
        tc = dict(resume['train_config']) if resume else TrainConfig.load(args.config).to_dict()
        for key, value in (('iters', args.iters), ('batch_size', args.batch_size),
                           ('seed', args.seed), ('threads', args.threads),
                           ('learning_rate', getattr(args, 'learning_rate', None)),
                           ('checkpoint_every_iters', args.checkpoint_every),
                           ('policy_labels', getattr(args, 'policy_labels', None))):
            if value is not None:
                tc[key] = value
        self.tc = TrainConfig.from_dict(tc)
        torch.set_num_threads(self.tc.threads)
        torch.manual_seed(self.tc.seed)

        init = None
        if getattr(args, 'init_from', None) and resume is None:
            init = torch.load(args.init_from, map_location='cpu', weights_only=False)
        # The sample shapes come from the checkpoint when resuming or fine-tuning, else from
        # the YAML.
        source = resume or init
        shape = source['policy_config'] if source else read_ros_params(
            Path(args.config) if args.config else config_path(TRAIN_YAML), TRAIN_NODE)['model']
        add_goal = bool(getattr(args, 'add_goal_input', False))
        if add_goal and (init is None or int(shape.get('goal_dim', 0)) != 0):
            raise ValueError('--add-goal-input needs --init-from a checkpoint without goal input '
                             '(and no run to resume)')
        goal = add_goal or int(shape.get('goal_dim', 0)) > 0
        self.train_set, self.val_set, meta, self.val_names = load_demos(
            args.demos, int(shape['n_obs_steps']), int(shape['horizon']),
            shape['action_frame'] == 'relative_ee', self.tc.val_fraction, self.tc.seed,
            args.max_episodes, progress=not args.no_progress, goal=goal,
            policy_labels=self.tc.policy_labels, expert_pace=self.tc.expert_pace)
        self.meta = meta
        if source:
            # Fine-tuning keeps the source's normaliser: the weights were trained in its scale.
            self.cfg = PolicyConfig.from_dict(source['policy_config'])
            self.normalizer = Normalizer(source['normalizer'])
            if add_goal:
                self.cfg, self.normalizer = with_goal_input(self.cfg, self.normalizer,
                                                            self.train_set)
        else:
            self.cfg = PolicyConfig.load(meta.decision_period_s, meta.push_height_m, args.config)
            self.normalizer = self.train_set.fit_normalizer()

        self.model = FlowPolicyNet(self.cfg)
        self.ema = copy.deepcopy(self.model)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.tc.learning_rate,
                                     weight_decay=self.tc.weight_decay)
        self.step = 0
        self.history: Dict[str, List[float]] = {'train_step': [], 'train_loss': [],
                                                'val_step': [], 'val_loss': [],
                                                'val_action_err_m': []}
        self.gen = torch.Generator().manual_seed(self.tc.seed)
        self.rng = np.random.default_rng(self.tc.seed)
        self.command = command
        if init is not None:
            weights = init.get('weights') or init.get('ema') or init['model']
            weights = {k: v.float() for k, v in weights.items()}
            if add_goal:
                weights = widen_for_goal(weights, self.cfg.goal_dim)
            self.model.load_state_dict(weights)
            self.ema.load_state_dict(weights)
            self.command = f'{command} ; initialised from step {int(init.get("step", 0))} of ' \
                           f'{init.get("command", args.init_from)}'
        if resume:
            self.model.load_state_dict(resume['model'])
            self.ema.load_state_dict(resume['ema'])
            self.opt.load_state_dict(resume['optimizer'])
            self.step = int(resume['step'])
            self.history = resume['history']
            self.gen.set_state(resume['rng']['torch'])
            self.rng.bit_generator.state = resume['rng']['numpy']
            self.command = resume['command'] + ' ; resumed: ' + self.command
        self.stop_requested = False

    def train_step(self) -> float:
        """One optimiser step; return the batch loss."""
        for group in self.opt.param_groups:
            group['lr'] = self.tc.learning_rate * lr_factor(self.step, self.tc.warmup_iters,
                                                            self.tc.iters)
        rows = self.rng.integers(0, len(self.train_set), size=self.tc.batch_size)
        b = self.train_set.batch(rows, self.normalizer)
        images = random_shift(images_to_tensor(b['images']), self.cfg.aug_shift_px, self.gen)
        loss = flow_matching_loss(self.model, b['action'], images, b['proprio'], self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip_norm)
        self.opt.step()
        # EMA warm-up: early on the average must follow the fast-moving weights.
        ema_update(self.ema, self.model,
                   min(self.tc.ema_decay, (1.0 + self.step) / (10.0 + self.step)))
        self.step += 1
        return float(loss.detach())

    def save(self) -> None:
        """Write checkpoint.pt, train_config.yaml and loss.png."""
        if self.val_set is not None:
            loss, err = validation_metrics(self.ema, self.val_set, self.normalizer,
                                           self.tc.batch_size, self.tc.val_batches,
                                           self.tc.seed + 1)
            self.history['val_step'].append(self.step)
            self.history['val_loss'].append(loss)
            self.history.setdefault('val_action_err_m', []).append(err)
            print(f'step {self.step}: val loss {loss:.4f}, val executed-step error '
                  f'{1e3 * err:.1f} mm', flush=True)
        atomic_save({
            'model': self.model.state_dict(), 'ema': self.ema.state_dict(),
            'optimizer': self.opt.state_dict(), 'step': self.step,
            'normalizer': self.normalizer.state_dict(), 'policy_config': self.cfg.to_dict(),
            'train_config': self.tc.to_dict(), 'command': self.command,
            'rng': {'torch': self.gen.get_state(), 'numpy': self.rng.bit_generator.state},
            'history': self.history, 'demo_meta': self.meta.raw,
            'val_episodes': self.val_names,
        }, self.out / 'checkpoint.pt')
        with open(self.out / 'train_config.yaml', 'w', encoding='utf-8') as f:
            yaml.safe_dump({'command': self.command, 'step': self.step,
                            'demos': [str(d) for d in np.atleast_1d(self.args.demos)],
                            'train_episodes': len(self.train_set.episodes),
                            'val_episodes': self.val_names,
                            'parameters': count_parameters(self.model),
                            'train': self.tc.to_dict(), 'model': self.cfg.to_dict(),
                            'normalizer': self.normalizer.state_dict()}, f, sort_keys=False)
        plot_losses(self.history, self.out / 'loss.png')

    def run(self) -> Dict[str, Any]:
        """Train until ``iters`` (or a stop signal); return a summary."""
        self.model.train()
        bar = None
        if not self.args.no_progress:
            from tqdm import tqdm
            bar = tqdm(total=self.tc.iters, initial=self.step, unit='it', mininterval=5.0)
        window: List[float] = []
        t0, s0 = time.monotonic(), self.step
        while self.step < self.tc.iters and not self.stop_requested:
            window.append(self.train_step())
            if bar is not None:
                bar.update(1)
            if self.step % self.tc.log_every_iters == 0:
                self.history['train_step'].append(self.step)
                self.history['train_loss'].append(float(np.mean(window)))
                if bar is not None:
                    bar.set_postfix(loss=f'{np.mean(window):.4f}')
                window = []
            if self.step % self.tc.checkpoint_every_iters == 0:
                self.save()
        if self.step % self.tc.checkpoint_every_iters != 0 or self.step == s0:
            self.save()
        if bar is not None:
            bar.close()
        rate = (self.step - s0) / max(time.monotonic() - t0, 1e-9)
        return {'step': self.step, 'it_per_s': rate, 'history': self.history}


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point of ``genpolicy-train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    trainer = Trainer(args, ' '.join(shlex.quote(a) for a in ['genpolicy-train'] + argv))

    def _stop(signum: int, _frame: Any) -> None:
        # Finish the current step, write a checkpoint, exit: safe to stop a run any time.
        trainer.stop_requested = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f'policy parameters: {count_parameters(trainer.model)}; train samples '
          f'{len(trainer.train_set)} from {len(trainer.train_set.episodes)} episodes; '
          f'starting at step {trainer.step}', flush=True)
    summary = trainer.run()
    print(f'done: step {summary["step"]}, {summary["it_per_s"]:.2f} it/s, checkpoint '
          f'{Path(args.out) / "checkpoint.pt"}', flush=True)


if __name__ == '__main__':
    main()
