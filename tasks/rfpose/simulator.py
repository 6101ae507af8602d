"""Synthetic RF-Pose recordings: a radio and a camera watching 1–3 people in a room.

    python -m tasks.rfpose.simulator --out data/rfpose-sim --sessions 4 --seconds 20

    from tasks.rfpose import simulator
    paths = simulator.simulate("data/rfpose-sim", sessions=4, seconds=20, seed=0)

One directory per recording, in the session format ``tasks/rfpose/sessions.py`` reads::

    session.json      {"rf": {"fps"}, "rgb": {"fps", "width", "height"}, "scene", "clock_offset_s"?}
    rf/horizontal.npy (N, R, A) complex64: range bins (near → far) × azimuth bins (left → right)
    rf/vertical.npy   (N, R, E) complex64: range bins (near → far) × elevation bins (down → up)
                      (``grid="cartesian"``: depth × lateral and depth × height bins instead)
    rf/timestamps.npy (N,) float64, the radio's clock
    rgb/000000.jpg …  M frames;  rgb/timestamps.npy (M,) float64, the camera's clock
    keypoints.json    ground truth in image pixels, CrowdPose order, "frame" = stored RGB index
    truth.json        what sync must estimate and tests check: clock offset and drift, dropped
                      frames, each stored RGB frame's true time on the radio clock, the geometry

What is modelled (world: x right, y up, z away from the radio; metres and seconds):

- A room (floor, ceiling, side and back walls) and 1–3 people, each with a height, build,
  walking speed and colours. Each follows a plan of walks between waypoints (trapezoidal speed,
  turning on the way), standing and sitting. The 14 CrowdPose joints come from forward
  kinematics: hip/knee/shoulder/elbow angles driven by a gait phase that advances with the
  distance walked, blended into a sitting pose; people may pass through each other.
- The camera: a pinhole 12 cm beside the radio, tilted 6° down, 60° horizontal field of view.
  Frames are ray-cast walls and a tiled floor, with each person drawn as depth-sorted shaded
  capsules (torso, limbs, head) over a floor shadow, plus sensor noise and a slowly drifting
  exposure, saved as JPEG. A joint gets v = 2 when it is in the image and unoccluded, v = 1 when
  in the image but hidden (something drawn over its pixel is ≥ 0.2 m nearer, or the
  through-wall wall), v = 0 outside, where its projected pixel is still written. A person is
  labelled when at least one joint has v > 0; the bbox is the joints' extent, padded 0.1 m and
  clipped to the image.
- The radio: heatmaps on two planes. Reflectors are points on the torso, head and limbs, each
  with its part's reflectivity, an amplitude falling as 1/R (the 1/R⁴ round-trip power loss,
  half compensated by the radio's range gain) and the phase 4πR/λ (λ at 6.3 GHz). A limb
  reflects only when near-perpendicular to the line of sight (specular), and drops out at
  random while it moves (a 2-state Markov chain per limb). Multipath: mirror images across the
  back and side walls (image method: weaker, at their longer range). Each plane is formed where
  a radio resolves it, in (range, angle) cells (±72°), blurred there by a fixed range and angle
  resolution, then resampled onto the output grid: by default (``grid="range-angle"``) range
  0–8 m × azimuth ±0.6 rad and range × elevation −0.6…0.4 rad, what an FMCW antenna array
  resolves (HuPR's planes are the same kind) and a margin around the camera's view; or
  (``grid="cartesian"``) depth 0–8 m × x ±4 m and depth × height 0–2.56 m, where a person
  blurs more across the farther they stand. Static clutter
  (the back wall, furniture) and complex Gaussian noise. Through-wall: a wall 0.8–1.2 m out
  attenuates everything behind it (two-way ~6 dB), adds its own strong reflection and raises
  the noise 1.5–2×. Its camera frames still show the room (people v = 2 where seen), standing
  in for a camera calibrated to the radio's view from inside the room, so sync and ground truth
  work as in the visible scene; ``opaque_wall=True`` gives the real view instead: the camera
  sees the wall, every joint in the image is v = 1, and the video cannot fix the clock offset.
- Clocks: the radio's stamps are a frame counter (exact, from a random epoch), with a frame
  dropped now and then (0.3 %). The camera runs on its own clock: ``camera = radio + offset_s +
  drift_ppm·1e-6·(radio − radio_t0)`` (``radio_t0`` = the first RF stamp) with offset U(−2, 2)
  s, drift U(−50, 50) ppm, stamp jitter σ U(1, 3) ms, and 1–4 % of its frames dropped.
  ``session.json`` carries ``clock_offset_s`` only when asked (``clock_offset=True``);
  ``truth.json`` always has it.

Deterministic: the same seed gives byte-identical npy and json files (and JPEGs, with the same
Pillow); people, room and clocks draw from their own streams, so a session's visible and
through-wall variants (same seed) hold the same people. A 20 s session at the defaults (600 RF
frames of 64×64 per plane, ~290 JPEGs of 160×120) is ~40 MB and takes ~2 s on a busy 2-core
machine; a session already written with the same parameters is kept (``simulate``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tasks.errors import BadInput
from tasks.rfpose.skeleton import K

GENERATOR = "visionflow.rfpose-sim/2"  # bump whenever the same seed would give other bytes
SCENES = ("visible", "through-wall")
RADIO = np.array([0.0, 1.0, 0.0])
WAVELENGTH = 3e8 / 6.3e9            # the middle of RF-Pose's 5.4–7.2 GHz sweep
R0 = 3.0                            # range at which a reflector's amplitude is its reflectivity
RF_EXTENT = {"depth_m": (0.0, 8.0), "x_m": (-4.0, 4.0), "height_m": (0.0, 2.56)}
RANGE_SIGMA = 0.09                  # m; about a 1.8 GHz sweep's range resolution
ANGLE_SIGMA = {"x": 0.05, "height": 0.06}  # rad; the blur across = angle × range
POLAR = {"range_m": (0.0, 9.0), "angle_rad": (-1.26, 1.26)}  # the radio's cells: ±72° of view
POLAR_BINS = (128, 128)             # finer than the blur on both axes (0.07 m, 0.02 rad)
# grid="range-angle" (the default, what FMCW arrays and HuPR give): range × azimuth and range ×
# elevation, the angles measured from the radio's boresight in each plane; the window covers
# the camera's view with a margin (it sees ±30° across, 29° down to 17° up).
RANGE_ANGLE = {"range_m": (0.0, 8.0), "azimuth_rad": (-0.6, 0.6), "elevation_rad": (-0.6, 0.4)}
GRIDS = ("range-angle", "cartesian")
NOISE = 0.008                       # complex noise σ per cell, visible scene
WALK, STAND, SIT = 0, 1, 2
UP = np.array([0.0, 1.0, 0.0])


class SimulationError(BadInput):
    """The simulation was asked for something it cannot make; the message says what."""


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _smooth(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# --- geometry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Room:
    width: float                # side walls at x = ±width/2
    depth: float                # back wall at z = depth
    ceiling: float
    wall_z: float | None        # the through-wall wall's plane, None in the visible scene
    colors: np.ndarray          # (6, 3) floor a, floor b, side walls, back wall, ceiling, wall


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float
    position: np.ndarray
    pitch: float                # rad, down

    @property
    def axes(self):
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return np.array([1.0, 0, 0]), np.array([0, c, s]), np.array([0, -s, c])  # right, up, forward

    def project(self, points: np.ndarray):
        """World points (..., 3) → pixels (..., 2) and camera depth (...)."""
        right, up, forward = self.axes
        d = points - self.position
        z = d @ forward
        zs = np.maximum(z, 1e-3)
        u = self.width / 2 + self.focal * (d @ right) / zs
        v = self.height / 2 - self.focal * (d @ up) / zs
        return np.stack([u, v], axis=-1), z

    def inside(self, pixels: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Which projected points land in the image, in front of the camera."""
        u, v = pixels[..., 0], pixels[..., 1]
        return (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height) & (z > 0.1)


def _room(seed: int, scene: str) -> Room:
    rng = _rng(seed, "room")
    colors = rng.uniform(60, 220, size=(6, 3))
    colors[1] = colors[0] * rng.uniform(0.6, 0.85)           # checker: the darker tile
    wall_z = float(_rng(seed, "wall").uniform(0.8, 1.2)) if scene == "through-wall" else None
    return Room(float(rng.uniform(4.0, 6.0)), float(rng.uniform(4.5, 6.0)), 2.7, wall_z, colors)


HALF_FOV_DEG = 30  # a 60° horizontal field of view


def _camera(image_size: tuple[int, int]) -> Camera:
    w, h = image_size
    return Camera(w, h, (w / 2) / np.tan(np.radians(HALF_FOV_DEG)), RADIO + [0.12, 0.05, 0.0], np.radians(6))


# --- people: plans and kinematics --------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    height: float
    build: float                # shoulder/hip width factor
    speed: float                # m/s at a steady walk
    phase0: float
    colors: np.ndarray          # (4, 3) shirt, trousers, skin, hair
    plan: np.ndarray            # (S, 9) kind, start, duration, x0, z0, x1, z1, heading_in, heading


def _waypoint(rng, room: Room, camera: Camera, near: float) -> np.ndarray:
    z = rng.uniform(near, room.depth - 0.5)
    half = room.width / 2 - 0.4
    if rng.random() > 0.1:   # mostly inside the camera's view, now and then at its edge
        half = min(half, 0.85 * z * (camera.width / 2) / camera.focal)
    return np.array([rng.uniform(-half, half), z])


def _person(rng, room: Room, camera: Camera, seconds: float) -> Person:
    skin = np.array([[95, 60, 45], [160, 110, 80], [200, 150, 120], [225, 185, 160]])
    colors = np.stack([rng.uniform(30, 230, 3), rng.uniform(20, 120, 3),
                       skin[rng.integers(len(skin))], rng.uniform(10, 80, 3)])
    person = dict(height=float(rng.uniform(1.5, 1.95)), build=float(rng.uniform(0.9, 1.15)),
                  speed=float(rng.uniform(0.8, 1.4)), phase0=float(rng.uniform(0, 2 * np.pi)))
    near = 2.0  # the camera sees a standing adult from here; beyond any through-wall wall
    pos, heading, t, rows = _waypoint(rng, room, camera, near), float(rng.uniform(-np.pi, np.pi)), 0.0, []
    while t < seconds + 1.0:
        kind = rng.choice([WALK, STAND, SIT], p=[0.5, 0.3, 0.2]) if rows else WALK
        target, new_heading = pos, heading
        if kind == WALK:
            for _ in range(20):
                target = _waypoint(rng, room, camera, near)
                if np.hypot(*(target - pos)) > 1.0:
                    break
            length = float(np.hypot(*(target - pos)))
            duration = length / (person["speed"] * rng.uniform(0.8, 1.1)) + 0.5
            new_heading = float(np.arctan2(target[0] - pos[0], target[1] - pos[1]))
        else:
            duration = rng.uniform(1.0, 4.0) if kind == STAND else rng.uniform(2.5, 5.0)
        rows.append([kind, t, duration, *pos, *target, heading, new_heading])
        pos, heading, t = target, new_heading, t + duration
    return Person(**person, colors=colors, plan=np.array(rows))


def _motion(person: Person, t: np.ndarray):
    """Where and how a person moves at times t (s from the start): the plan, evaluated."""
    plan = person.plan
    index = np.clip(np.searchsorted(plan[:, 1], t, side="right") - 1, 0, len(plan) - 1)
    seg = plan[index]
    kind, dur = seg[:, 0], seg[:, 2]
    u = np.clip(t - seg[:, 1], 0, dur)
    o, e = seg[:, 3:5], seg[:, 5:7]
    length = np.hypot(*(e - o).T)
    ramp = np.minimum(0.5, dur / 3)                        # trapezoidal speed: accelerate, cruise, stop
    vmax = length / (dur - ramp)
    s = np.where(u < ramp, 0.5 * vmax * u ** 2 / ramp,
                 np.where(u > dur - ramp, length - 0.5 * vmax * (dur - u) ** 2 / ramp,
                          0.5 * vmax * ramp + vmax * (u - ramp)))
    speed = vmax * np.clip(np.minimum(u, dur - u) / ramp, 0, 1)
    frac = np.where(length > 0, s / np.maximum(length, 1e-9), 0.0)
    xz = o + (e - o) * frac[:, None]
    turn = np.angle(np.exp(1j * (seg[:, 8] - seg[:, 7])))
    heading = seg[:, 7] + turn * _smooth(u / 0.6)
    walked = np.concatenate([[0.0], np.cumsum(np.hypot(*(plan[:, 5:7] - plan[:, 3:5]).T))])
    distance = walked[index] + s
    sit = np.where(kind == SIT, _smooth(u / 0.8) * _smooth((dur - u) / 0.8), 0.0)
    return xz, heading, speed, distance, sit


def _direction(angle, forward):
    """A limb hanging down, swung forward by ``angle``: (T, 3)."""
    return np.sin(angle)[:, None] * forward - np.cos(angle)[:, None] * UP


def pose(person: Person, t: np.ndarray) -> np.ndarray:
    """The 14 joints (T, 14, 3) in CrowdPose order, world metres, at times t."""
    h, t = person.height, np.asarray(t, dtype=np.float64)
    xz, heading, speed, distance, sit = _motion(person, t)
    amp = np.clip(speed / 1.1, 0, 1.3)
    phase = 2 * np.pi * distance / (0.8 * h) + person.phase0   # one stride ≈ 0.8 × height
    sway = 0.05 * np.sin(2 * np.pi * 0.3 * t + person.phase0)
    forward = np.stack([np.sin(heading), np.zeros_like(t), np.cos(heading)], axis=1)
    left = np.stack([-np.cos(heading), np.zeros_like(t), np.sin(heading)], axis=1)

    def blend(walking, sitting):
        return (1 - sit) * walking + sit * sitting

    hip_flex = [blend(side * 0.42 * amp * np.sin(phase), 1.5) for side in (1, -1)]
    knee_flex = [blend(amp * (0.1 + 0.85 * np.maximum(0, side * np.cos(phase)) ** 2), np.pi / 2) for side in (1, -1)]
    arm_flex = [blend(-side * 0.35 * amp * np.sin(phase) + side * sway, 0.5) for side in (1, -1)]
    elbow_flex = blend(0.2 + 0.3 * amp, 1.0)
    lean = blend(0.06 * amp, -0.1)
    pelvis_y = blend(0.53 * h * (1 - 0.015 * amp * (1 - np.cos(2 * phase))), 0.285 * h)

    pelvis = np.stack([xz[:, 0], pelvis_y, xz[:, 1]], axis=1)
    trunk = np.sin(lean)[:, None] * forward + np.cos(lean)[:, None] * UP
    chest = pelvis + 0.29 * h * trunk
    joints = np.zeros((len(t), K, 3))
    for i, side in enumerate((1, -1)):                     # left, right
        out = side * left
        hip = pelvis + out * 0.055 * h * person.build
        knee = hip + 0.245 * h * _direction(hip_flex[i], forward)
        ankle = knee + 0.246 * h * _direction(hip_flex[i] - knee_flex[i], forward)
        shoulder = chest + out * 0.11 * h * person.build
        upper = _direction(arm_flex[i], forward) + 0.15 * out
        elbow = shoulder + 0.186 * h * upper / np.linalg.norm(upper, axis=1, keepdims=True)
        lower = _direction(arm_flex[i] + elbow_flex, forward) + 0.1 * out
        wrist = elbow + 0.146 * h * lower / np.linalg.norm(lower, axis=1, keepdims=True)
        for j, point in zip((0, 2, 4, 6, 8, 10), (shoulder, elbow, wrist, hip, knee, ankle)):
            joints[:, j + i] = point
    joints[:, 13] = chest + 0.025 * h * trunk                          # neck
    joints[:, 12] = joints[:, 13] + 0.09 * h * trunk                   # head (its centre)
    return joints


# --- the camera ----------------------------------------------------------------------------------


def _background(room: Room, cam: Camera, opaque_wall: bool) -> np.ndarray:
    """The empty room (H, W, 3) float, by casting one ray per pixel."""
    right, up, forward = cam.axes
    u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    across, down = (u - cam.width / 2) / cam.focal, (v - cam.height / 2) / cam.focal
    rays = forward + across[..., None] * right - down[..., None] * up                       # (H, W, 3)
    planes = [(1, 0.0), (1, room.ceiling), (0, -room.width / 2), (0, room.width / 2), (2, room.depth)]
    if opaque_wall:
        planes.append((2, room.wall_z))
    hit_t, surface = np.full(u.shape, np.inf), np.zeros(u.shape, int)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, (axis, value) in enumerate(planes):
            t = (value - cam.position[axis]) / rays[..., axis]
            closer = (t > 1e-6) & (t < hit_t)
            hit_t, surface = np.where(closer, t, hit_t), np.where(closer, i, surface)
    p = cam.position + hit_t[..., None] * rays
    c = room.colors
    tiles = (np.floor(p[..., 0] / 0.6) + np.floor(p[..., 2] / 0.6)) % 2
    colour = {0: np.where(tiles[..., None] > 0, c[1], c[0]), 1: c[4], 2: c[2], 3: c[2] * 0.9,
              4: c[3], 5: c[5]}
    img = np.zeros(u.shape + (3,))
    for i, col in colour.items():
        img = np.where((surface == i)[..., None], col, img)
    skirting = (surface >= 2) & (surface <= 4) & (p[..., 1] < 0.12)
    door = (surface == 4) & (np.abs(p[..., 0] - room.width / 4) < 0.45) & (p[..., 1] < 2.0)
    bricks = (surface == 5) & ((np.abs(p[..., 1] % 0.25) < 0.02)
                               | (np.abs((p[..., 0] + 0.2 * (np.floor(p[..., 1] / 0.25) % 2)) % 0.4) < 0.02))
    img[skirting | bricks] *= 0.55
    img[door] = c[3] * 0.5 + [40, 25, 10]
    light = 0.55 + 0.45 * np.exp(-np.sum((p - [0, room.ceiling, room.depth / 2]) ** 2, axis=-1) / 14)
    return img * light[..., None]


def _parts(joints: np.ndarray, person: Person):
    """Drawable parts of one person: (kind, joint indices, radius m, colour)."""
    shirt, trousers, skin, _ = person.colors
    h = person.height
    yield "torso", (0, 1, 7, 6), 0.0, shirt
    for a, b, radius, col in ((0, 2, 0.045, shirt), (1, 3, 0.045, shirt), (2, 4, 0.035, skin), (3, 5, 0.035, skin),
                              (6, 8, 0.07, trousers), (7, 9, 0.07, trousers), (8, 10, 0.05, trousers),
                              (9, 11, 0.05, trousers), (13, 12, 0.04, skin)):
        yield "limb", (a, b), radius * h / 1.75, col
    yield "head", (12,), 0.065 * h, skin


def _shadows(img: np.ndarray, joints: np.ndarray, cam: Camera) -> None:
    """Darken a 0.3 m disc on the floor under each person's hips."""
    mask = np.zeros((cam.height, cam.width), np.uint8)
    angles = np.linspace(0, 2 * np.pi, 12)
    ring = 0.3 * np.stack([np.cos(angles), np.zeros(12), np.sin(angles)], 1)
    for j in joints:
        px, _ = cam.project(ring + [(j[6, 0] + j[7, 0]) / 2, 0.01, (j[6, 2] + j[7, 2]) / 2])
        cv2.fillConvexPoly(mask, np.round(px * 16).astype(np.int32), 1, cv2.LINE_AA, shift=4)
    img[mask > 0] *= 0.7


def _draw(img, depth, kind: str, pts: np.ndarray, r: float, colour, hair, z: float) -> None:
    """One part as a shaded shape on ``img`` (dark rim, lit core up-left) and its depth on ``depth``."""
    fog = float(np.clip(1.05 - 0.05 * z, 0.6, 1.0))
    dark, lit = (colour * 0.7 * fog).tolist(), (colour * fog).tolist()
    q = np.round(pts * 16).astype(np.int32)                      # 4 fractional bits: smooth motion
    if kind == "torso":                                          # pts: shoulders L R, hips R L
        cv2.fillConvexPoly(img, q, dark, cv2.LINE_AA, shift=4)
        cv2.fillConvexPoly(depth, q // 16, z)
        spine = np.round([pts[:2].mean(0) * 16, pts[2:].mean(0) * 16]).astype(int)
        width = max(1, int(0.4 * np.linalg.norm(pts[0] - pts[1])))
        cv2.line(img, tuple(spine[0]), tuple(spine[1]), lit, width, cv2.LINE_AA, shift=4)
    elif kind == "limb":
        thick = max(1, int(round(2 * r)))
        cv2.line(img, tuple(q[0]), tuple(q[1]), dark, thick, cv2.LINE_AA, shift=4)
        off = np.round([-0.3 * r * 16, -0.3 * r * 16]).astype(int)
        cv2.line(img, tuple(q[0] + off), tuple(q[1] + off), lit, max(1, thick // 2), cv2.LINE_AA, shift=4)
        cv2.line(depth, tuple(q[0] // 16), tuple(q[1] // 16), z, thick)
    else:                                                        # head: a face, hair on top
        centre, radius = tuple(q[0]), max(1, int(round(r * 16)))
        cv2.circle(img, centre, radius, dark, -1, cv2.LINE_AA, shift=4)
        cv2.ellipse(img, centre, (radius, radius), 0, 180, 360, (hair * fog).tolist(), -1, cv2.LINE_AA, shift=4)
        cv2.circle(depth, tuple(q[0] // 16), max(1, int(round(r))), z, -1)


def _render(background, people, joints, cam: Camera, rng, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """One frame (H, W, 3) uint8 and the joints' flags (P, 14): 2 visible, 1 hidden, 0 outside."""
    img = background.copy()
    _shadows(img, joints, cam)
    img = np.clip(img, 0, 255).astype(np.uint8)
    depth = np.full((cam.height, cam.width), np.inf, np.float32)
    pixels, z = cam.project(joints)                                   # (P, 14, 2), (P, 14)
    parts = [(float(z[p, list(idx)].mean()), p, kind, idx, radius, col)
             for p, (person, j) in enumerate(zip(people, joints)) for kind, idx, radius, col in _parts(j, person)]
    for zc, p, kind, idx, radius, col in sorted(parts, key=lambda part: -part[0]):   # far to near
        _draw(img, depth, kind, pixels[p, list(idx)], cam.focal * radius / max(zc, 0.1), col, people[p].colors[3], zc)
    col = np.clip(pixels[..., 0].astype(int), 0, cam.width - 1)
    row = np.clip(pixels[..., 1].astype(int), 0, cam.height - 1)
    hidden = depth[row, col] < z - 0.2
    flags = np.where(cam.inside(pixels, z), np.where(hidden, 1, 2), 0)
    noisy = img.astype(np.float32) * gain + rng.normal(0, 2.5, img.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8), flags


def _labels(joints, flags, cam: Camera) -> list[dict]:
    """keypoints.json people: joints in pixels with their flags, and a padded, clipped bbox."""
    pixels, z = cam.project(joints)
    people = []
    for px, zz, v in zip(pixels, z, flags):
        if not (v > 0).any():
            continue
        pad = cam.focal * 0.1 / max(float(zz.mean()), 0.1)
        x0, y0 = np.clip(px.min(0) - pad, 0, [cam.width, cam.height])
        x1, y1 = np.clip(px.max(0) + pad, 0, [cam.width, cam.height])
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        kp = [[round(float(x), 2), round(float(y), 2), int(f)] for (x, y), f in zip(px, v)]
        people.append({"keypoints": kp, "bbox": [round(float(b), 2) for b in (x0, y0, x1 - x0, y1 - y0)]})
    return people


# --- the radio -----------------------------------------------------------------------------------

_RF_LIMBS = ((0, 2, 0.12), (2, 4, 0.10), (1, 3, 0.12), (3, 5, 0.10),
             (6, 8, 0.30), (8, 10, 0.25), (7, 9, 0.30), (9, 11, 0.25))   # joint a, joint b, reflectivity
_ALONG = np.array([0.125, 0.375, 0.625, 0.875])


def _dropout(rng, joints: np.ndarray) -> np.ndarray:
    """(T, L) 1 = the limb reflects: a 2-state Markov chain per limb, off ≈ 20 % of the time,
    whose clock is the limb's motion (a still limb keeps its state: dropout is a change of
    aspect, and a static reflector stays static)."""
    mids = np.stack([(joints[:, a] + joints[:, b]) / 2 for a, b, _ in _RF_LIMBS], 1)    # (T, L, 3)
    moved = np.zeros(mids.shape[:2])
    moved[1:] = np.clip(np.linalg.norm(np.diff(mids, axis=0), axis=-1) / 0.03, 0, 1)
    on = np.ones(mids.shape[:2])
    draws = rng.random(on.shape)
    for t in range(1, len(on)):
        on[t] = np.where(on[t - 1] > 0, draws[t] >= 0.08 * moved[t], draws[t] < 0.3 * moved[t])
    return on


def _sight(points: np.ndarray) -> np.ndarray:
    """Unit lines of sight from the radio to points (..., 3)."""
    d = points - RADIO
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _reflectors(joints: np.ndarray, on: np.ndarray):
    """Body reflectors of one person: positions (T, P, 3) and real amplitudes (T, P)."""
    T = len(joints)
    grid = [(r, c) for r in (0.0, 0.5, 1.0) for c in (0, 1 / 3, 2 / 3, 1)]
    shoulders = [(1 - c) * joints[:, 0] + c * joints[:, 1] for _, c in grid]
    hips = [(1 - c) * joints[:, 6] + c * joints[:, 7] for _, c in grid]
    torso = np.stack([(1 - r) * s + r * h for (r, _), s, h in zip(grid, shoulders, hips)], axis=1)   # (T, 12, 3)
    facing = np.cross(joints[:, 1] - joints[:, 0], UP)
    facing /= np.linalg.norm(facing, axis=1, keepdims=True) + 1e-9
    chest_los = _sight(torso.mean(1))
    torso_amp = np.repeat(((0.6 + 0.4 * np.abs(np.sum(facing * chest_los, 1))) / 12)[:, None], 12, 1)
    points, amps = [torso, joints[:, 12:13]], [torso_amp, np.full((T, 1), 0.2)]
    for k, (a, b, reflectivity) in enumerate(_RF_LIMBS):
        axis = joints[:, b] - joints[:, a]
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        specular = np.exp(-np.sum(axis * _sight((joints[:, a] + joints[:, b]) / 2), 1) ** 2 / (2 * 0.3 ** 2))
        points.append(joints[:, a, None] + _ALONG[None, :, None] * (joints[:, b] - joints[:, a])[:, None])
        amps.append(np.repeat((reflectivity / 4 * specular * on[:, k])[:, None], 4, 1))
    return np.concatenate(points, 1), np.concatenate(amps, 1)


def _mirrors(points, amps, room: Room):
    """The image method: each reflector mirrored across the back and side walls, weaker."""
    copies_p, copies_a = [points], [amps]
    for axis, plane, coeff in ((2, room.depth, 0.35), (0, room.width / 2, 0.3), (0, -room.width / 2, 0.3)):
        mirrored = points.copy()
        mirrored[..., axis] = 2 * plane - mirrored[..., axis]
        copies_p.append(mirrored)
        copies_a.append(amps * coeff)
    return np.concatenate(copies_p, -2), np.concatenate(copies_a, -1)


def _field(points, amps):
    """Complex amplitude: 1/R falloff (after range gain) and the round-trip phase 4πR/λ."""
    r = np.linalg.norm(points - RADIO, axis=-1)
    return amps * (R0 / np.maximum(r, 0.5)) * np.exp(1j * 4 * np.pi * r / WAVELENGTH)


def _axis(extent, bins):
    lo, hi = extent
    return lo + (np.arange(bins) + 0.5) * (hi - lo) / bins


def _corners(fa, fb, bins):
    """Bilinear corners of fractional cell coordinates: flat indices and weights, 0 off the grid."""
    for da in (0, 1):
        for db in (0, 1):
            i, j = np.floor(fa) + da, np.floor(fb) + db
            w = np.clip(1 - np.abs(fa - i), 0, 1) * np.clip(1 - np.abs(fb - j), 0, 1)
            ok = (i >= 0) & (i < bins[0]) & (j >= 0) & (j < bins[1])
            yield np.where(ok, i * bins[1] + j, 0).astype(np.int64), np.where(ok, w, 0.0)


def _fractional(values, extent, bins):
    lo, hi = extent
    return (values - lo) / (hi - lo) * bins - 0.5


def _polar(ranges, angles, values, angle_sigma):
    """Splat complex reflectors onto the radio's (range, angle) cells, (T, R, Φ), then blur them
    by its resolution: fixed in range and in angle, so the blur across grows with the range."""
    T = ranges.shape[0]
    cells = POLAR_BINS[0] * POLAR_BINS[1]
    fa = _fractional(ranges, POLAR["range_m"], POLAR_BINS[0])
    fb = _fractional(angles, POLAR["angle_rad"], POLAR_BINS[1])
    index, weight = zip(*_corners(fa, fb, POLAR_BINS))
    index = np.concatenate(index, 1) + (np.arange(T) * cells)[:, None]       # (T, 4P)
    weighted = np.concatenate([values * w for w in weight], 1)
    flat = (np.bincount(index.ravel(), weighted.real.ravel(), T * cells)
            + 1j * np.bincount(index.ravel(), weighted.imag.ravel(), T * cells))
    return _blur(flat.reshape(T, *POLAR_BINS), angle_sigma)


def _gauss(bins, extent, sigma):
    c = _axis(extent, bins)
    return np.exp(-(c[:, None] - c[None, :]) ** 2 / (2 * sigma ** 2)).astype(np.float32)


def _blur(polar, angle_sigma):
    # Four large real products, not many small ones: batched small GEMMs crawl under a threaded
    # BLAS on a busy machine.
    T, R, A = polar.shape
    across, ranged = _gauss(A, POLAR["angle_rad"], angle_sigma), _gauss(R, POLAR["range_m"], RANGE_SIGMA)
    flat = polar.reshape(T * R, A)
    out = (flat.real.astype(np.float32) @ across) + 1j * (flat.imag.astype(np.float32) @ across)  # (T·R, Φ)
    out = out.reshape(T, R, A).transpose(1, 0, 2).reshape(R, T * A)
    out = (ranged @ out.real) + 1j * (ranged @ out.imag)                                       # (R, T·Φ)
    return out.reshape(R, T, A).transpose(1, 0, 2)                                            # (T, R, Φ)


def _plane(depth, across, values, size, extents, origin, angle_sigma, grid):
    """One heatmap (T, D, A): reflectors seen from the radio at (range, angle) in this plane,
    blurred there, then resampled onto the output grid: (range, angle) cells over ``extents``
    for ``grid="range-angle"``, Cartesian depth × across cells for ``"cartesian"``."""
    polar = _polar(np.hypot(depth, across - origin), np.arctan2(across - origin, depth), values, angle_sigma)
    first, second = (_axis(e, n) for e, n in zip(extents, size))
    a, b = np.meshgrid(first, second, indexing="ij")
    if grid == "range-angle":
        ranges, angles = a, b
    else:
        ranges, angles = np.hypot(a, b - origin), np.arctan2(b - origin, a)
    fa = _fractional(ranges, POLAR["range_m"], POLAR_BINS[0]).ravel()
    fb = _fractional(angles, POLAR["angle_rad"], POLAR_BINS[1]).ravel()
    flat = polar.reshape(len(polar), -1)
    out = sum(flat[:, i] * w for i, w in _corners(fa, fb, POLAR_BINS))                     # (T, D·A)
    return out.reshape(len(polar), *size)


def _extents(grid: str) -> tuple[tuple, tuple]:
    """The (first axis, second axis) extents of the horizontal and the vertical heatmap."""
    if grid == "range-angle":
        r = RANGE_ANGLE["range_m"]
        return (r, RANGE_ANGLE["azimuth_rad"]), (r, RANGE_ANGLE["elevation_rad"])
    return ((RF_EXTENT["depth_m"], RF_EXTENT["x_m"]), (RF_EXTENT["depth_m"], RF_EXTENT["height_m"]))


def _heatmaps(points, values, size, grid):
    """Horizontal (x–depth plane) and vertical (height–depth plane) heatmaps (T, D, ·) of
    complex reflectors; the vertical plane's angle is elevation, its Cartesian axis height."""
    eh, ev = _extents(grid)
    h = _plane(points[..., 2], points[..., 0], values, size, eh, RADIO[0], ANGLE_SIGMA["x"], grid)
    v = _plane(points[..., 2], points[..., 1], values, size, ev, RADIO[1], ANGLE_SIGMA["height"], grid)
    return h, v


def _static(seed: int, room: Room):
    """Static reflectors: the back wall's specular spot, furniture; and the through-wall wall's
    own reflection (strong specular spot, rough diffuse surface). Positions (1, P, 3), field (1, P)."""
    rng = _rng(seed, "static")
    n = int(rng.integers(2, 5))
    furniture = np.stack([rng.uniform(-room.width / 2 + 0.3, room.width / 2 - 0.3, n),
                          rng.uniform(0.3, 1.0, n), rng.uniform(2.0, room.depth - 0.3, n)], 1)
    points = np.vstack([[0.0, RADIO[1], room.depth], furniture])
    field = _field(points, np.concatenate([[0.8], rng.uniform(0.15, 0.5, n)]))
    wall_points, wall_field = np.zeros((0, 3)), np.zeros(0, complex)
    if room.wall_z is not None:
        wrng = _rng(seed, "wall-surface")
        rough = np.stack([wrng.uniform(-3, 3, 40), wrng.uniform(0, 2.5, 40), np.full(40, room.wall_z)], 1)
        wall_points = np.vstack([[0.0, RADIO[1], room.wall_z], rough])
        wall_field = np.concatenate([[2.0], 0.08 * np.exp(2j * np.pi * wrng.random(40))])
    return points[None], field[None], wall_points[None], wall_field[None]


def _rf(seed: int, room: Room, persons, times, size, grid="range-angle"):
    """RF heatmaps (T, D, X) and (T, D, Y) complex64 at radio times (s from the start)."""
    rng = _rng(seed, "rf")
    pts, amps = [], []
    for person in persons:
        joints = pose(person, times)
        p, a = _reflectors(joints, _dropout(rng, joints))
        pts.append(p)
        amps.append(a)
    points, amps = _mirrors(np.concatenate(pts, 1), np.concatenate(amps, 1), room)
    field = _field(points, amps)
    s_points, s_field, w_points, w_field = _static(seed, room)
    h, v = _heatmaps(points, field, size, grid)
    sh, sv = _heatmaps(s_points, s_field, size, grid)
    noise = NOISE
    if room.wall_z is not None:
        wrng = _rng(seed, "wall-loss")
        loss, noise = wrng.uniform(0.4, 0.55), NOISE * wrng.uniform(1.5, 2.0)   # two-way loss ~6 dB
        wh, wv = _heatmaps(w_points, w_field, size, grid)
        h, v = loss * (h + sh) + wh, loss * (v + sv) + wv
    else:
        h, v = h + sh, v + sv
    nrng = _rng(seed, "rf-noise")
    for plane in (h, v):
        plane += noise / np.sqrt(2) * (nrng.standard_normal(plane.shape) + 1j * nrng.standard_normal(plane.shape))
    return h.astype(np.complex64), v.astype(np.complex64)


# --- clocks --------------------------------------------------------------------------------------


def _clocks(seed: int, seconds: float, rf_fps: float, rgb_fps: float) -> dict:
    rng = _rng(seed, "clock")
    t0 = round(float(rng.uniform(50, 500)), 3)                   # the radio's epoch: its uptime
    offset, drift = float(rng.uniform(-2, 2)), float(rng.uniform(-50, 50))
    jitter = float(rng.uniform(1e-3, 3e-3))
    n_rf = int(round(seconds * rf_fps))
    rf_keep = rng.random(n_rf) >= 0.003
    rf_keep[[0, -1]] = True
    lag = rng.uniform(0, 1 / rgb_fps)                            # the camera starts a little later
    n_rgb = int(np.floor((seconds * (1 + drift * 1e-6) - lag) * rgb_fps - 1e-9)) + 1
    nominal = lag + np.arange(n_rgb) / rgb_fps                   # camera clock − (t0 + offset)
    rgb_true = nominal / (1 + drift * 1e-6)                      # the same instants, radio clock − t0
    stamps = t0 + offset + nominal + np.clip(rng.normal(0, jitter, n_rgb), -3 * jitter, 3 * jitter)
    rgb_keep = rng.random(n_rgb) >= rng.uniform(0.01, 0.04)
    rgb_keep[[0, -1]] = True
    return {"t0": t0, "offset_s": offset, "drift_ppm": drift, "jitter_s": jitter,
            "rf_times": np.arange(n_rf)[rf_keep] / rf_fps, "rf_dropped": np.flatnonzero(~rf_keep),
            "rgb_times": rgb_true[rgb_keep], "rgb_stamps": stamps[rgb_keep], "rgb_dropped": np.flatnonzero(~rgb_keep)}


# --- writing -------------------------------------------------------------------------------------


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


@dataclass(frozen=True)
class Spec:
    """Everything one session's bytes depend on (with ``GENERATOR``)."""

    seed: int
    seconds: float = 20.0
    scene: str = "visible"
    rf_size: tuple[int, int] = (64, 64)          # (range or depth bins, bins across), both planes
    grid: str = "range-angle"                    # or "cartesian": see RANGE_ANGLE
    image_size: tuple[int, int] = (160, 120)     # (W, H)
    rf_fps: float = 30
    rgb_fps: float = 15
    clock_offset: bool = False                   # write the true offset into session.json
    opaque_wall: bool = False                    # through-wall: the camera sees the wall

    def params(self) -> dict:
        return {**asdict(self), "rf_size": list(self.rf_size), "image_size": list(self.image_size)}


def _write_rf(tmp: Path, spec: Spec, room: Room, persons, clocks) -> None:
    (tmp / "rf").mkdir(parents=True)
    horizontal, vertical = _rf(spec.seed, room, persons, clocks["rf_times"], spec.rf_size, spec.grid)
    np.save(tmp / "rf" / "horizontal.npy", horizontal)
    np.save(tmp / "rf" / "vertical.npy", vertical)
    np.save(tmp / "rf" / "timestamps.npy", clocks["t0"] + clocks["rf_times"])


def _write_rgb(tmp: Path, spec: Spec, room: Room, cam: Camera, persons, clocks) -> None:
    (tmp / "rgb").mkdir()
    opaque = room.wall_z is not None and spec.opaque_wall
    background = _background(room, cam, opaque)
    joints = np.stack([pose(p, clocks["rgb_times"]) for p in persons], 1)      # (M, P, 14, 3)
    rng, frames, gain = _rng(spec.seed, "render"), [], 1.0
    for i, frame_joints in enumerate(joints):
        gain = 1 + 0.98 * (gain - 1) + 0.002 * rng.standard_normal()          # auto-exposure, drifting
        if opaque:    # the camera sees the wall; the people behind it are in the image, hidden
            img = np.clip(background * gain + rng.normal(0, 2.5, background.shape), 0, 255).astype(np.uint8)
            flags = np.where(cam.inside(*cam.project(frame_joints)), 1, 0)
        else:
            img, flags = _render(background, persons, frame_joints, cam, rng, gain)
        Image.fromarray(img).save(tmp / "rgb" / f"{i:06d}.jpg", quality=90)
        frames.append({"frame": i, "people": _labels(frame_joints, flags, cam)})
    np.save(tmp / "rgb" / "timestamps.npy", clocks["rgb_stamps"])
    _dump(tmp / "keypoints.json", {"frames": frames})


def _write_meta(tmp: Path, spec: Spec, room: Room, cam: Camera, persons, clocks) -> None:
    session = {"rf": {"fps": spec.rf_fps}, "rgb": {"fps": spec.rgb_fps, "width": cam.width, "height": cam.height},
               "scene": spec.scene}
    if spec.clock_offset:
        session["clock_offset_s"] = clocks["offset_s"]
    _dump(tmp / "session.json", session)
    _dump(tmp / "truth.json", {
        "generator": GENERATOR, "params": spec.params(),
        "clock": "camera = radio + offset_s + drift_ppm * 1e-6 * (radio - radio_t0)",
        "offset_s": clocks["offset_s"], "drift_ppm": clocks["drift_ppm"], "radio_t0": clocks["t0"],
        "jitter_ms": clocks["jitter_s"] * 1e3,
        "dropped_rf": clocks["rf_dropped"].tolist(), "dropped_rgb": clocks["rgb_dropped"].tolist(),
        "rgb_radio_times": (clocks["t0"] + clocks["rgb_times"]).tolist(),
        "rf_grid": _grid_truth(spec.grid),
        "radio": RADIO.tolist(),
        "camera": {"position": cam.position.tolist(), "pitch_deg": float(np.degrees(cam.pitch)), "focal_px": cam.focal},
        "room": {"width": room.width, "depth": room.depth, "wall_z": room.wall_z},
        "people": [{"height": p.height, "speed": p.speed} for p in persons],
    })


def _grid_truth(grid: str) -> dict:
    if grid == "range-angle":
        axes = {"horizontal": ["range_m", "azimuth_rad"], "vertical": ["range_m", "elevation_rad"]}
        extents = RANGE_ANGLE
    else:
        axes = {"horizontal": ["depth_m", "x_m"], "vertical": ["depth_m", "height_m"]}
        extents = RF_EXTENT
    return {"grid": grid, **axes, **{k: list(v) for k, v in extents.items()},
            "range_sigma_m": RANGE_SIGMA, "angle_sigma_rad": ANGLE_SIGMA}


def _write(tmp: Path, spec: Spec) -> None:
    room, cam = _room(spec.seed, spec.scene), _camera(spec.image_size)
    rng = _rng(spec.seed, "people")
    persons = [_person(rng, room, cam, spec.seconds) for _ in range(int(rng.integers(1, 4)))]
    clocks = _clocks(spec.seed, spec.seconds, spec.rf_fps, spec.rgb_fps)
    _write_rf(tmp, spec, room, persons, clocks)
    _write_rgb(tmp, spec, room, cam, persons, clocks)
    _write_meta(tmp, spec, room, cam, persons, clocks)


def _check(spec: Spec) -> None:
    if spec.grid not in GRIDS:
        raise SimulationError(f"unknown RF grid {spec.grid!r}; expected one of {', '.join(GRIDS)}")
    if spec.scene not in SCENES:
        raise SimulationError(f"unknown scene {spec.scene!r}; expected one of {', '.join(SCENES)}")
    if spec.seconds * min(spec.rf_fps, spec.rgb_fps) < 2:
        raise SimulationError(f"{spec.seconds} s gives fewer than 2 frames at {min(spec.rf_fps, spec.rgb_fps)} fps")


def _commit(path: Path, spec: Spec) -> Path:
    """Build the session beside ``path``, then rename it into place (a retry starts afresh)."""
    _check(spec)
    if path.exists() and any(path.iterdir()) and not (path / "session.json").exists():
        raise SimulationError(f"{path} exists and is not a session; not overwriting it")
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, spec)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _committed(path: Path, spec: Spec) -> bool:
    try:
        truth = json.loads((path / "truth.json").read_text())
    except (FileNotFoundError, ValueError):
        return False
    return ((path / "session.json").exists() and truth.get("generator") == GENERATOR
            and truth.get("params") == spec.params())


def simulate_session(path, seed: int, seconds: float = 20.0, scene: str = "visible", **options) -> Path:
    """Write one session directory at ``path``; ``options`` are ``Spec``'s other fields
    (rf_size, image_size, rf_fps, rgb_fps, clock_offset, opaque_wall)."""
    return _commit(Path(path), Spec(int(seed), float(seconds), scene, **options))


def simulate(out_dir, *, sessions: int = 4, seconds: float = 20.0, seed: int = 0, scenes=SCENES,
             **options) -> list[Path]:
    """``sessions`` recordings ``out_dir/s000``…: session i has seed ``seed·1000 + i`` and scene
    ``scenes[i % len(scenes)]``; ``options`` as for ``simulate_session``. A session already
    written with the same parameters is kept, any other is rewritten."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(sessions):
        spec, path = Spec(seed * 1000 + i, float(seconds), scenes[i % len(scenes)], **options), out / f"s{i:03d}"
        paths.append(path if _committed(path, spec) else _commit(path, spec))
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic RF-Pose sessions (RF heatmaps, RGB, labels).")
    parser.add_argument("--out", required=True, help="directory to write s000, s001, … into")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rf-size", type=int, default=64, help="heatmap side (bins on both axes)")
    parser.add_argument("--grid", choices=GRIDS, default="range-angle", help="heatmap cells (default range-angle)")
    parser.add_argument("--clock-offset", action="store_true", help="write the true clock offset into session.json")
    parser.add_argument("--opaque-wall", action="store_true",
                        help="through-wall scenes: the camera sees the wall, not the room behind it")
    args = parser.parse_args(argv)
    for path in simulate(args.out, sessions=args.sessions, seconds=args.seconds, seed=args.seed,
                         rf_size=(args.rf_size, args.rf_size), grid=args.grid,
                         clock_offset=args.clock_offset, opaque_wall=args.opaque_wall):
        print(path)


if __name__ == "__main__":
    main()
