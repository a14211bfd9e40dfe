"""The official FLOP count of every MOAT variant, as moat_test.py computes it.

Builds each model in a TF1 graph (variables are never initialised, so MOAT-4 costs no
memory), runs TF's profiler `float_operation` over the graph with the test's Einsum
FLOP registration, and divides by batch and by 2 (multiply-adds), exactly as
`_profile_default_graph` in deeplab2's moat_test.py. Writes JSON: per variant the
profiler total and its breakdown by op type.

Usage: /work/venv-moat/bin/python profile_flops.py --deeplab2 DIR --out flops.json
"""

import argparse
import json
import re
import sys

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deeplab2", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    sys.path.insert(0, args.deeplab2)
    import tensorflow as tf
    from tensorflow.python.framework import ops
    from deeplab2.model.layers import moat_attention
    from deeplab2.model.pixel_encoder import moat as moat_lib

    @ops.RegisterStatistics("Einsum", "flops")
    def _einsum_flops(graph, node):  # same rule as moat_test.py
        def shape(name):
            s = tf.compat.v1.graph_util.tensor_shape_from_node_def_name(graph, name)
            return s.as_list()
        u, v = shape(node.input[0]), shape(node.input[1])
        eq = node.attr["equation"].s.decode("utf-8")
        ue, ve, oe = re.split(",|->", eq)
        dims = {}
        for c in set(ue + ve):
            dims[c] = u[ue.index(c)] if c in ue else v[ve.index(c)]
        if any(d is None for d in dims.values()):
            # The symbolic call on tf.keras.Input inside get_model (batch None): not
            # part of the measured batch-1 graph, like every op whose shape is unknown.
            return ops.OpStats("flops", None)
        out = [dims[c] for c in set(oe)]
        contracted = [dims[c] for c in set(ue + ve) - set(oe)]
        return ops.OpStats("flops", 2 * np.prod(out) * np.prod(contracted))

    names = {
        "moat-0": ("moat0_pretrain_224_1k", 224), "moat-1": ("moat1_pretrain_224_1k", 224),
        "moat-2": ("moat2_finetune_384_22k", 384), "moat-3": ("moat3_finetune_512_22k", 512),
        "moat-4": ("moat4_finetune_512_22k", 512),
        "tiny-moat-0": ("tiny_moat0_pretrain_256_1k", 256),
        "tiny-moat-1": ("tiny_moat1_pretrain_256_1k", 256),
        "tiny-moat-2": ("tiny_moat2_pretrain_256_1k", 256),
        "tiny-moat-3": ("tiny_moat3_pretrain_256_1k", 256),
    }
    result = {}
    batch = 1
    for ours, (name, res) in names.items():
        # The official code caches its one-hot lookup constants per process; they
        # belong to the graph that made them.
        moat_attention.LOOKUP_TENSOR_CACHE.clear()
        graph = tf.Graph()
        with graph.as_default():
            inputs = tf.compat.v1.placeholder(tf.float32, [batch, res, res, 3])
            model = moat_lib.get_model(
                name, input_shape=(res, res, 3),
                window_size=[None, None, [res // 16, res // 16], [res // 32, res // 32]],
                override_config=dict(build_classification_head_with_class_num=1000),
                pretrained_weights_path=None, global_attention_at_end_of_moat_stage=True,
                pool_size=2)
            model(inputs, training=False)
            # The profiler's per-node statistic, summed by op type. The one-hot einsums
            # that re-index the relative position tables (`height_lookup`,
            # `width_lookup`) are constant folding of weights, not per-image work: kept
            # apart, since the model zoo's numbers leave them out.
            by_op, lookup = {}, 0
            for op in graph.get_operations():
                try:
                    stats = ops.get_stats_for_node_def(graph, op.node_def, "flops")
                except ValueError:
                    continue
                if stats.value is None:
                    continue
                if "height_lookup" in op.name or "width_lookup" in op.name:
                    lookup += stats.value
                    continue
                by_op[op.type] = by_op.get(op.type, 0) + int(stats.value)
            total = sum(by_op.values())
        result[ours] = {"resolution": res, "flops_over_2": total / batch / 2,
                        "position_lookup_flops_over_2": lookup / batch / 2,
                        "by_op_over_2": {k: v / batch / 2 for k, v in by_op.items()}}
        print(ours, res, total / batch / 2 / 1e9, lookup / 2e9,
              {k: round(v / 2e9, 3) for k, v in by_op.items()}, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
