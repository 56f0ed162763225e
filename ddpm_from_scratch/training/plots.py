"""The loss curve as a PNG, drawn with PIL (matplotlib is not a dependency of this project).

Logged losses (one per --logging_steps window) in light grey, their exponential smoothing in blue,
on a log-scale loss axis: DDPM losses fall by an order of magnitude in the first few hundred steps
and then creep down, and a linear axis would show only the first part.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from ddpm_from_scratch.sampling.images import save_image_atomic

WIDTH, HEIGHT = 800, 480
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 36, 44


def smoothing_weight(num_points: int, window_fraction: float = 0.02) -> float:
    """An EMA weight averaging over ~window_fraction of the curve, so short and long runs look alike."""
    return max(0.0, 1.0 - 1.0 / max(1.0, window_fraction * num_points))


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """Bias-corrected exponential smoothing (tensorboard's), so the first points are not pulled to 0."""
    weight = smoothing_weight(len(values)) if weight is None else weight
    smoothed, running = [], 0.0
    for i, value in enumerate(values, start=1):
        running = weight * running + (1 - weight) * value
        smoothed.append(running / (1 - weight**i) if weight < 1 else value)
    return smoothed


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / count))
    for multiple in (1, 2, 5, 10):
        if (high - low) / (step * multiple) <= count:
            step *= multiple
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def render_loss_curve(steps: Sequence[int], losses: Sequence[float], title: str = "training loss") -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = PIL.ImageDraw.Draw(image)
    font = PIL.ImageFont.load_default()
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    draw.text((left, 10), title, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    points = [(s, l) for s, l in zip(steps, losses) if l > 0 and math.isfinite(l)]
    if not points:
        draw.text((left + 10, top + 10), "no loss logged yet", fill="black", font=font)
        return image
    xs, ys = [p[0] for p in points], [math.log10(p[1]) for p in points]
    x_low, x_high = min(xs), max(max(xs), min(xs) + 1)
    y_low, y_high = min(ys), max(ys)
    pad = max((y_high - y_low) * 0.05, 0.02)
    y_low, y_high = y_low - pad, y_high + pad

    def to_pixel(x: float, log_y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (log_y - y_low) / (y_high - y_low) * (bottom - top))

    for tick in _nice_ticks(x_low, x_high):
        px, _ = to_pixel(tick, y_low)
        draw.line([px, bottom, px, bottom + 4], fill="black")
        draw.text((px - 12, bottom + 8), f"{tick:g}", fill="black", font=font)
    for exponent in range(math.floor(y_low), math.ceil(y_high) + 1):
        for mantissa in (1, 2, 5):
            log_tick = exponent + math.log10(mantissa)
            if y_low <= log_tick <= y_high:
                _, py = to_pixel(x_low, log_tick)
                draw.line([left, py, right, py], fill=(230, 230, 230))
                draw.text((6, py - 6), f"{10 ** log_tick:.3g}", fill="black", font=font)
    draw.text(((left + right) // 2 - 20, HEIGHT - 18), "step", fill="black", font=font)
    raw = [to_pixel(x, y) for x, y in zip(xs, ys)]
    smoothed = [to_pixel(x, math.log10(v)) for x, v in zip(xs, smooth([p[1] for p in points]))]
    if len(raw) > 1:
        draw.line(raw, fill=(190, 190, 190), width=1)
        draw.line(smoothed, fill=(31, 119, 180), width=2)
    else:
        x, y = raw[0]
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 119, 180))
    draw.text((right - 190, top + 6), f"last (smoothed): {smooth([p[1] for p in points])[-1]:.4g}", fill="black", font=font)
    return image


def save_loss_curve(path: str | Path, steps: Sequence[int], losses: Sequence[float], title: str = "training loss") -> Path:
    return save_image_atomic(render_loss_curve(steps, losses, title), path)
