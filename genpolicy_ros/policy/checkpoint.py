"""Checkpoint files of the flow policy: the training checkpoint and the shipped export.

A training checkpoint (``checkpoint.pt`` in the run directory) holds everything needed to
resume. A shipped file (``checkpoints/push_flow_v2.pt``) holds only the EMA weights (fp16 by
default), the :class:`PolicyConfig`, the normaliser stats and provenance (step, command line,
demo meta). Both load through :func:`load_for_inference`.
"""

import os
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from genpolicy_ros.policy.config import PolicyConfig
from genpolicy_ros.policy.dataset import Normalizer
from genpolicy_ros.policy.network import FlowPolicyNet

PathLike = Union[str, Path]
EXPORT_FORMAT = 'genpolicy_flow_policy/1'


def atomic_save(obj: Any, path: PathLike) -> None:
    """Save with ``torch.save`` through a temporary file so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_for_inference(path: PathLike) -> Tuple[FlowPolicyNet, Normalizer, Dict[str, Any]]:
    """Load a training checkpoint or an export: (eval-mode float32 net, normaliser, info)."""
    ckpt = torch.load(Path(path), map_location='cpu', weights_only=False)
    cfg = PolicyConfig.from_dict(ckpt['policy_config'])
    if 'weights' in ckpt:
        weights = ckpt['weights']
    else:  # a training checkpoint: the EMA weights are the policy
        weights = ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model']
    net = FlowPolicyNet(cfg)
    net.load_state_dict({k: v.float() for k, v in weights.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    info = {'step': int(ckpt.get('step', 0)), 'command': ckpt.get('command', ''),
            'demo_meta': ckpt.get('demo_meta', {}), 'format': ckpt.get('format', 'train')}
    return net, Normalizer(ckpt['normalizer']), info


def export_checkpoint(src: PathLike, dst: PathLike, fp16: bool = True) -> Dict[str, Any]:
    """Write the shipped file from a training checkpoint; return its summary."""
    ckpt = torch.load(Path(src), map_location='cpu', weights_only=False)
    weights = ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model']
    dtype = torch.float16 if fp16 else torch.float32
    # Buffers (keypoint grid, time-embedding frequencies up to 1000) stay float32: fp16 would
    # shift the frequencies by up to 0.5 and change the network.
    buffers = {n for n, _ in FlowPolicyNet(PolicyConfig.from_dict(
        ckpt['policy_config'])).named_buffers()}
    out = {
        'format': EXPORT_FORMAT,
        'weights': {k: (v.to(dtype) if v.is_floating_point() and k not in buffers else v)
                    for k, v in weights.items()},
        'policy_config': ckpt['policy_config'],
        'normalizer': ckpt['normalizer'],
        'step': int(ckpt['step']),
        'command': ckpt.get('command', ''),
        'demo_meta': ckpt.get('demo_meta', {}),
        'val_loss': ckpt.get('history', {}).get('val_loss', [])[-1:],
    }
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    atomic_save(out, dst)
    return {'step': out['step'], 'bytes': Path(dst).stat().st_size, 'dtype': str(dtype)}


def main() -> None:
    """Console entry: ``python -m genpolicy_ros.policy.checkpoint SRC DST [--fp32]``."""
    import argparse
    parser = argparse.ArgumentParser(description='Export a training checkpoint for shipping.')
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--fp32', action='store_true', help='keep float32 weights')
    args = parser.parse_args()
    print(export_checkpoint(args.src, args.dst, fp16=not args.fp32))


if __name__ == '__main__':
    main()
