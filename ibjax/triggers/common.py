"""What every trigger shares: input checks, the :class:`Trigger` object, constant arrays as static
parameters, pattern files, and the checks of parameter values and image shapes. The helpers the
trigger modules share (:func:`prepare_images`, :func:`finish_images`, :class:`TriggerParams`,
:func:`check_range`, ...) have public names but stay out of ``__all__``: they are for the modules of
this package, not for users.

Conventions (all triggers)
--------------------------
* Images are floating-point arrays ``[..., H, W, C]`` in ``[0, 1]`` (no normalisation), any number
  of leading batch axes (none included). Every trigger returns the same shape and dtype, clipped to
  ``[0, 1]``; it computes in float32.
* Intensities (colours, amplitudes, magnitudes) are in pixel units of ``[0, 1]``: "64/255" is a
  change of 64 grey levels of an 8-bit image.
* Parameters are frozen dataclasses that hash by value, with tuple fields and :class:`StaticArray`
  for constant arrays. Trigger functions are jitted with ``params`` static, so eager calls compile
  once per (params, shape), and compose with an outer jit / vmap / grad.
* Randomness comes only from an explicit ``jax.random`` key; fixed patterns come from an integer
  ``seed`` in the params (NumPy PCG64, stable across versions). A batch with one key gets
  independent randomness per image.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.fields import Config

__all__ = ["StaticArray", "Trigger", "load_pattern", "uniform_pattern"]


def prepare_images(images: jax.Array) -> tuple[jax.Array, Any]:
    """Check ``[..., H, W, C]`` floating images; return a float32 copy and the input dtype."""
    images = jnp.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"images must have shape [..., H, W, C]; got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must be floating point in [0, 1]; got dtype {images.dtype}")
    return images.astype(jnp.float32), images.dtype


def finish_images(x: jax.Array, dtype: Any) -> jax.Array:
    return jnp.clip(x, 0.0, 1.0).astype(dtype)


# Trigger functions are jitted with their params dataclass static (hashable by value).
jit_static_params = functools.partial(jax.jit, static_argnames=("params",))


# --------------------------------------------------------------------------------------------------
# The trigger object
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trigger:
    """A trigger function with its settings bound: ``trigger(images, key=None) -> images``.

    Hashes and compares by value (the module-level function, the frozen params, ``uses_key``), so
    two separately built triggers with equal settings are one static argument to ``jax.jit``: a
    jitted step that takes it as static compiles once, with no cache kept alive for that purpose.

    Attributes:
      fn: a module-level trigger function ``fn(images, params)`` or, if ``uses_key``,
        ``fn(images, params, key=key)``.
      params: its frozen params dataclass.
      uses_key: the trigger draws per-image randomness from the key (WaNet's noise warp,
        Adaptive-Blend's piece mask); calling it without a key raises. Deterministic triggers
        ignore the key.
    """

    fn: Callable[..., jax.Array]
    params: Any
    uses_key: bool = False

    def __call__(self, images: jax.Array, key: Optional[jax.Array] = None) -> jax.Array:
        """``images [..., H, W, C]`` in [0, 1] -> triggered images, same shape and dtype."""
        if not self.uses_key:
            return self.fn(images, self.params)
        if key is None:
            name = getattr(self.fn, "__name__", "this")
            raise ValueError(f"the {name} trigger draws per-image randomness: call it with a PRNG key")
        return self.fn(images, self.params, key=key)


# --------------------------------------------------------------------------------------------------
# Constant arrays as static parameters, and pattern files
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class StaticArray:
    """A small constant float32 array as a field of static (hashable) trigger params.

    Equal contents hash equal, so jitted steps that take the trigger as a static argument compile
    once per pattern. Build with :meth:`of`; read with :attr:`value`.
    """

    data: bytes
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: Any) -> "StaticArray":
        a = np.ascontiguousarray(np.asarray(array, np.float32))
        return cls(a.tobytes(), tuple(int(d) for d in a.shape))

    @property
    def value(self) -> np.ndarray:
        """The array, float32 of :attr:`shape` (read-only)."""
        return np.frombuffer(self.data, np.float32).reshape(self.shape)

    @staticmethod
    def describe() -> str:
        return "an array or a path to a .npy / image file"

    def __repr__(self) -> str:
        digest = hashlib.sha1(self.data).hexdigest()[:10]
        return f"StaticArray(shape={self.shape}, sha1={digest})"


PatternSource = Union[StaticArray, np.ndarray, jax.Array, str, "os.PathLike[str]"]
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def load_pattern(source: PatternSource, *, signed: bool = False, name: str = "pattern") -> np.ndarray:
    """Read a trigger pattern from an array, a :class:`StaticArray` or a file; float32 ``[H, W, C]``.

    Unsigned patterns (images in [0, 1]: Blend's noise, TrojanNN's patch):
      * integer arrays are 8-bit images and are divided by 255 (the authors' Blend noise,
        ``poison_data_generator/trigger/Blendnoise.npy``, is uint8 ``[32, 32]`` in 0..255);
        values outside 0..255 are refused;
      * floating arrays must lie in [0, 1] (an 8-bit pattern stored as floats is refused: pass it
        as an integer array or divide by 255);
      * a path ending in ``.npy`` is loaded as an array; any other path is read with Pillow
        (greyscale modes -> C = 1, every other mode -> RGB, C = 3) and divided by 255.
    Signed patterns (additive perturbations, the low-frequency trigger): floating arrays or
    ``.npy`` files, used as they are.

    A 2-D ``[H, W]`` array gets a channel axis (C = 1). ``name`` starts the error messages.

    Raises:
      ValueError: a missing or unreadable file, a wrong number of axes, non-finite values, or values
        outside the range above.
    """
    what = name
    if isinstance(source, StaticArray):
        return _with_channel_axis(np.array(source.value), what)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        what = f"{name} file {path!r}"
        if not os.path.isfile(path):
            raise ValueError(f"{what} does not exist or is not a file")
        if path.lower().endswith(".npy"):
            try:
                array = np.load(path, allow_pickle=False)
            except Exception as err:  # noqa: BLE001 - any decoding failure is a bad file
                raise ValueError(f"{what} is not a readable .npy array ({err})") from None
        elif signed:
            raise ValueError(f"{what}: an additive (signed) pattern must be a float .npy array, not an image")
        else:
            array = _read_image(path, what)
    else:
        array = np.asarray(source)
    array = _with_channel_axis(array, what)
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if signed:
            raise ValueError(f"{what}: an additive (signed) pattern must be floating point, got {array.dtype}")
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{what}: integer patterns are 8-bit images (0..255), got values in [{lo}, {hi}]")
        return (array.astype(np.float32) / 255.0).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what}: expected a numeric array, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds NaN or infinite values")
    if not signed and (array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(
            f"{what}: float patterns must lie in [0, 1], got values in [{array.min():.4g}, {array.max():.4g}]; "
            "an 8-bit pattern must be an integer array (it is divided by 255) or be divided by 255 first"
        )
    return array


def _with_channel_axis(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{what} must be [H, W] or [H, W, C], got shape {array.shape}")
    return array


def _read_image(path: str, what: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a declared dependency
        raise ValueError(f"{what}: reading image files needs Pillow (pip install pillow)") from None
    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in _GREY_MODES else im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad file
        raise ValueError(f"{what} is not a readable image ({err})") from None


def uniform_pattern(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """A uniform [0, 1] pattern float32 ``[H, W, C]`` from NumPy's PCG64 ``default_rng(seed)``.

    Stable across NumPy and JAX versions: Blend's default noise and TrojanNN's starting patch.
    """
    rng = np.random.default_rng(int(seed))
    return rng.uniform(0.0, 1.0, (int(height), int(width), int(channels))).astype(np.float32)


def pattern_value(pattern: Optional[StaticArray], shape: tuple[int, int, int], name: str,
                  any_channels: bool = False) -> Optional[np.ndarray]:
    """The pattern's array, checked against the images' (H, W, C); ``any_channels``: C may also be 1."""
    if pattern is None:
        return None
    _check_pattern_shape(pattern.shape, shape, name, any_channels)
    return pattern.value


def _check_pattern_shape(pshape: tuple[int, ...], shape: tuple[int, ...], name: str, any_channels: bool) -> None:
    h, w, c = (int(d) for d in shape)
    ok = len(pshape) == 3 and tuple(pshape[:2]) == (h, w) and (pshape[2] == c or (any_channels and pshape[2] == 1))
    if not ok:
        want = f"({h}, {w}, 1) or ({h}, {w}, {c})" if any_channels and c != 1 else f"({h}, {w}, {c})"
        raise ValueError(f"the {name} pattern has shape {tuple(pshape)}; images of shape ({h}, {w}, {c}) need {want}: "
                         "give a pattern of the images' size")


def square_mask(height: int, width: int, row: int, col: int, size: int) -> np.ndarray:
    """bool[H, W, 1]: rows [row, row+size) x columns [col, col+size), cut at the border."""
    rows, cols = np.arange(height), np.arange(width)
    in_rows = (rows >= row) & (rows < row + size)
    in_cols = (cols >= col) & (cols < col + size)
    return (in_rows[:, None] & in_cols[None, :])[:, :, None]


# --------------------------------------------------------------------------------------------------
# Checks of parameter values (at construction) and of image shapes (Attack.validate)
# --------------------------------------------------------------------------------------------------


class TriggerParams(Config):
    """Base of every trigger's frozen params dataclass.

    At construction each field is coerced to its annotation by :func:`ibjax.fields.coerce` (the one
    value parser: text such as an attack option's ``"3"`` or ``"[0,1,0]"`` is read as the field's
    type; lists become tuples so the params hash by value; whole floats of int fields become ints),
    and a pattern field (``Optional[StaticArray]``) takes an array, a :class:`StaticArray` or a path
    (:func:`load_pattern`; a field with ``metadata={"signed": True}`` holds an additive
    perturbation). Then :meth:`check` checks the values' ranges. Either raises a one-line ValueError
    naming the field, the value and what was expected.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check()

    def _coerce_rules(self, f: "dataclasses.Field[Any]") -> Mapping[Any, Callable[[Any, str], Any]]:
        signed = bool(f.metadata.get("signed"))

        def pattern(v: Any, where: str) -> StaticArray:
            if isinstance(v, StaticArray):
                return v
            if isinstance(v, str) and v.strip().startswith("["):  # an array written inline (an attack option)
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    raise ValueError(f"{where} = {v!r}: expected {StaticArray.describe()} (not valid JSON)") from None
            if isinstance(v, (str, os.PathLike, np.ndarray, jax.Array, list, tuple)):
                return StaticArray.of(load_pattern(v, signed=signed, name=where))
            raise ValueError(f"{where} = {v!r}: expected {StaticArray.describe()}")

        return {StaticArray: pattern}

    def validate_shape(self, image_shape: Any) -> None:
        """Raise ValueError if this trigger cannot apply to images of shape ``(..., H, W, C)``."""
        image_hwc(image_shape)


def fail_field(params: Any, field: str, value: Any, expected: str) -> None:
    raise ValueError(f"{type(params).__name__}.{field} = {value!r}: expected {expected}")


def check_range(params: Any, field: str, lo: Optional[float] = None, hi: Optional[float] = None,
                integer: bool = False) -> None:
    """``lo <= params.field <= hi`` (either bound optional); ``integer``: also a whole number."""
    value = getattr(params, field)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        fail_field(params, field, value, kind)
    if integer and float(value) != int(value):
        fail_field(params, field, value, kind)
    if not np.isfinite(float(value)) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = (f"in [{lo}, {hi}]" if lo is not None and hi is not None
                  else f">= {lo}" if lo is not None else f"<= {hi}")
        fail_field(params, field, value, f"{kind} {bounds}")


def check_class_indices(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, indices: Any,
                        what: str) -> None:
    """ValueError when concrete class ``indices`` lie outside [0, K), K the width of ``logits_fn``'s
    output on ``images`` (found by abstract evaluation: nothing runs). Traced indices are not checked:
    their values are unknown until the program runs."""
    try:
        values = np.asarray(indices)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if values.size == 0:
        return
    num_classes = int(jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(images.shape, images.dtype)).shape[-1])
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{what} must lie in [0, {num_classes}) (the model's {num_classes} logits), got values in "
                         f"[{lo}, {hi}]")


def check_patch_fits(params: Any, shape: tuple[int, int, int], name: str) -> None:
    """The square patch (``row``, ``col``, ``size``) lies wholly inside H x W."""
    h, w = int(shape[0]), int(shape[1])
    if params.row + params.size > h or params.col + params.size > w:
        raise ValueError(
            f"the {name} patch (size={params.size} at row={params.row}, col={params.col}) does not fit in "
            f"{h}x{w} images: it needs row + size <= {h} and col + size <= {w}"
        )


def image_hwc(image_shape: Any) -> tuple[int, int, int]:
    """``(H, W, C)`` from an image shape (leading batch axes allowed)."""
    shape = tuple(int(d) for d in image_shape)
    if len(shape) < 3 or min(shape[-3:]) < 1:
        raise ValueError(f"image shape must be (..., H, W, C) with positive sides, got {tuple(image_shape)}")
    return shape[-3:]  # type: ignore[return-value]
