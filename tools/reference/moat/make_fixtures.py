"""Parity fixtures for crates/moat, written by the official TensorFlow MOAT code.

Builds two small MOAT networks with deeplab2's `MOAT` class (the same class as the
released models, narrower and shallower), fills every variable with random values
(including biases, BN moving statistics and relative position tables, so that layout,
bias placement and resizing all matter), and writes:

  tiny_global.index / tiny_global.data-00000-of-00001
      A TF1 bundle written by TensorFlow's SaveV2 with the names of the released
      checkpoints: EMA shadows (`.../ExponentialMovingAverage`) hold the model's values,
      raw variables hold perturbed values, plus an optimizer slot and `global_step`, so
      the converter's EMA / raw choice and filtering are tested.
  tiny_window_weights.safetensors
      The window-attention model's variables under their TF names and layouts (what
      `moat convert-tf` produces), for the safetensors loader.
  reference.safetensors
      Inputs (NCHW) and the official outputs: logits and res2..res5 of the global model,
      logits of the window model, and one raw variable for the raw-copy test.

Usage:
  python -m venv /work/venv-moat && /work/venv-moat/bin/pip install -r requirements.txt
  /work/venv-moat/bin/python make_fixtures.py --deeplab2 /path/to/deeplab2 \
      --out ../../../crates/moat/tests/fixtures
"""

import argparse
import os
import sys

import numpy as np


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--deeplab2", required=True,
                   help="directory whose child deeplab2/ is the official repo")
    p.add_argument("--out", required=True)
    return p.parse_args()


# Both models: stem 16, stages [mbconv, mbconv, moat, moat] with 1, 1, 2, 2 blocks of
# 32, 32, 64, 64 channels (2 heads of 32 in the MOAT stages), 10 classes.
BASE = dict(
    stem_size=[16, 16],
    block_type=["mbconv", "mbconv", "moat", "moat"],
    num_blocks=[1, 1, 2, 2],
    hidden_size=[32, 32, 64, 64],
    build_classification_head_with_class_num=10,
)


def base(tf):
    # N(0, 1) initial values, so that the relative position tables (kept from
    # initialisation, see fill) shape the attention visibly.
    return dict(BASE, kernel_initializer=tf.random_normal_initializer(stddev=1.0, seed=7))


def fill(model, rng):
    """Random values for every variable; returns {tf_name: array}."""
    values = {}
    for var in model.variables:
        name = var.name.split(":")[0]
        shape = var.shape.as_list()
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("kernel", "depthwise_kernel"):
            fan_in = int(np.prod(shape[:-1])) if leaf == "kernel" else shape[0] * shape[1]
            v = rng.normal(size=shape) / np.sqrt(fan_in)
        elif leaf == "weight":
            fan_in = shape[0] if len(shape) == 3 and "/o/" not in name else shape[0] * shape[1]
            v = rng.normal(size=shape) / np.sqrt(fan_in)
        elif leaf == "gamma":
            v = 1.0 + 0.2 * rng.normal(size=shape)
        elif leaf in ("beta", "bias", "moving_mean"):
            v = 0.2 * rng.normal(size=shape)
        elif leaf == "moving_variance":
            v = rng.uniform(0.5, 1.5, size=shape)
        elif leaf == "relative_position_embedding":
            # The official Attention re-indexes (and resizes) the table once, in build();
            # in eager mode a later assign() does not reach the bias it adds. So the
            # table keeps the value it was built with (the N(0, 1) initializer below).
            values[_scoped(name)] = var.numpy()
            continue
        else:
            raise ValueError(f"unexpected variable {name}")
        v = v.astype(np.float32)
        var.assign(v)
        values[_scoped(name)] = v
    return values


def _scoped(name):
    # Keras names the stem's Sequential variables without their scope; the released
    # checkpoints (and the official loader) use moat/stem/.
    return name if name.startswith("moat/") else "moat/stem/" + name


def nchw(x):
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def main():
    args = parse()
    sys.path.insert(0, args.deeplab2)
    import tensorflow as tf
    from deeplab2.model.pixel_encoder import moat as moat_lib
    from safetensors.numpy import save_file

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20231)
    tf.random.set_seed(0)

    # Global attention (classification), pool size 2, 64x64 input: stage 3 is 4x4
    # (the 27x27 table resized to 7x7), stage 4 2x2 (13x13 -> 3x3).
    glob = moat_lib.MOAT(window_size=[None, None, None, None], pool_size=2, **base(tf))
    x_glob = rng.normal(size=[2, 64, 64, 3]).astype(np.float32)
    glob(tf.constant(x_glob))
    glob_values = fill(glob, rng)
    logits_glob = glob(tf.constant(x_glob), training=False).numpy()
    backbone = moat_lib.MOAT(window_size=[None, None, None, None], pool_size=2,
                             **{**base(tf), "build_classification_head_with_class_num": None})
    backbone(tf.constant(x_glob))
    for v_dst, v_src in zip(backbone.variables, glob.variables[:len(backbone.variables)]):
        assert v_dst.name == v_src.name, (v_dst.name, v_src.name)
        v_dst.assign(v_src)
    endpoints = backbone(tf.constant(x_glob), training=False)

    # Window attention (downstream setting), pool size 3, 128x128 input: stage 3 is 8x8
    # in 4x4 windows, stage 4 4x4 in 2x2 windows, the last block of each MOAT stage global.
    win = moat_lib.MOAT(window_size=[None, None, [4, 4], [2, 2]], pool_size=3,
                        global_attention_at_end_of_moat_stage=True, **base(tf))
    x_win = rng.normal(size=[1, 128, 128, 3]).astype(np.float32)
    win(tf.constant(x_win))
    win_values = fill(win, rng)
    logits_win = win(tf.constant(x_win), training=False).numpy()

    # TF1 bundle with EMA shadows, raw variables, a slot and a step counter.
    trainable = {v.name.split(":")[0] for v in glob.trainable_variables}
    trainable = {n if n.startswith("moat/") else "moat/stem/" + n for n in trainable}
    names, tensors = [], []
    raw_probe = None
    for name, value in sorted(glob_values.items()):
        if name in trainable:
            raw = (value + 0.05 * rng.normal(size=value.shape)).astype(np.float32)
            names += [name, name + "/ExponentialMovingAverage"]
            tensors += [raw, value]
            if name == "moat/logits_head/bias":
                raw_probe = raw
        else:
            names.append(name)
            tensors.append(value)
    names += ["moat/block_00_00/pre_norm/gamma/Momentum", "global_step"]
    tensors += [np.zeros_like(glob_values["moat/block_00_00/pre_norm/gamma"]),
                np.array(1234, dtype=np.int64)]
    prefix = os.path.join(args.out, "tiny_global")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(t) for t in tensors])

    save_file(win_values, os.path.join(args.out, "tiny_window_weights.safetensors"))
    ref = {
        "input_global": nchw(x_glob),
        "logits_global": logits_glob.astype(np.float32),
        "input_window": nchw(x_win),
        "logits_window": logits_win.astype(np.float32),
        "raw_logits_head_bias": raw_probe,
    }
    for level in (2, 3, 4, 5):
        ref[f"res{level}_global"] = nchw(endpoints[f"res{level}"].numpy())
    save_file(ref, os.path.join(args.out, "reference.safetensors"))
    print("wrote", sorted(os.listdir(args.out)))
    print("logits_global[0]", logits_glob[0])


if __name__ == "__main__":
    main()
