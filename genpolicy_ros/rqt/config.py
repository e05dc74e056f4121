"""Configuration of the operator monitor GUI, read from ``config/operator.yaml``."""

from dataclasses import dataclass
from pathlib import Path
import typing
from typing import Any, Dict, Optional

from genpolicy_ros.recording.config import build_config, node_params


@dataclass
class GuiConfig:
    """Settings of the monitor widget (rqt plugin and standalone window); no defaults here."""

    redraw_hz: float
    history_s: float
    max_events: int
    stale_after_s: float
    service_timeout_s: float
    screenshot_delay_s: float
    window_width_px: int
    window_height_px: int
    qos_depth: int

    NODE_NAME: typing.ClassVar[str] = 'monitor_gui'

    def __post_init__(self) -> None:
        if not 0.0 < self.redraw_hz <= 60.0:
            raise ValueError(f'redraw_hz must be in (0, 60], got {self.redraw_hz}')
        if self.history_s <= 0 or self.service_timeout_s <= 0 or self.stale_after_s <= 0:
            raise ValueError('history_s, service_timeout_s and stale_after_s must be > 0')

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> 'GuiConfig':
        """Build from the (nested) ``ros__parameters`` dict."""
        return build_config(cls, params)

    @classmethod
    def load(cls, path: Optional[Path] = None) -> 'GuiConfig':
        """Read ``config/operator.yaml`` (or ``path``)."""
        return cls.from_dict(node_params(cls.NODE_NAME, path))
