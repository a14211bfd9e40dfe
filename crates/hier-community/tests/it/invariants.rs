//! Property tests: dendrogram structure, monotone bottom-up heights, metric invariance to
//! relabelling, and generator edge counts against their expectation.

use hier_community::bottom_up::{BottomUpOptions, average_linkage, bottom_up};
use hier_community::hsbm::{HsbmConfig, Rates};
use hier_community::metrics::{accuracy, adjusted_mutual_information, adjusted_rand_index};
use hier_community::paris::paris;
use hier_community::top_down::{TopDownOptions, top_down};
use hier_community::tree::Tree;
use proptest::prelude::*;

fn small_hsbm(seed: u64, leaf: usize, a: [f64; 3]) -> hier_community::hsbm::Hsbm {
    HsbmConfig::with_equal_sizes(
        Tree::balanced(2, 2).unwrap(),
        leaf,
        Rates::LogScaled(a.to_vec()),
    )
    .generate(seed)
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn dendrograms_are_valid_and_bottom_up_is_monotone(seed in 0u64..1000, leaf in 20usize..50,
                                                        a0 in 1.0f64..3.0, gap in 1.0f64..4.0) {
        let hsbm = small_hsbm(seed, leaf, [a0, a0 + gap, a0 + 3.0 * gap]);
        let g = &hsbm.graph;
        prop_assume!(g.num_edges() > 0);
        // Average linkage on the true leaves: leaves - 1 merges, consistent sizes, heights
        // non-decreasing and no density inversions (UPGMA).
        let d = average_linkage(g, &hsbm.community, 4, false);
        d.validate().unwrap();
        prop_assert_eq!(d.merges.len(), 3);
        prop_assert!(d.merges.windows(2).all(|w| w[0].height <= w[1].height + 1e-12));
        prop_assert_eq!(d.inversions(4), 0);
        let (bu, _) = bottom_up(g, &BottomUpOptions { k: Some(4), seed, ..Default::default() }).unwrap();
        bu.validate().unwrap();
        prop_assert!(bu.merges.windows(2).all(|w| w[0].height <= w[1].height + 1e-12));
        let td = top_down(g, &TopDownOptions { seed, ..Default::default() }).unwrap();
        td.validate().unwrap();
        let p = paris(g, false).unwrap();
        p.validate().unwrap();
        prop_assert_eq!(p.merges.len(), g.num_nodes() - 1);
        prop_assert!(p.merges.windows(2).all(|w| w[0].height <= w[1].height));
    }

    #[test]
    fn metrics_ignore_label_names(truth in proptest::collection::vec(0usize..5, 10..80),
                                  noise in proptest::collection::vec(0usize..4, 80), shift in 1usize..50) {
        let n = truth.len();
        let pred: Vec<usize> = (0..n).map(|i| if noise[i] == 0 { (truth[i] + 1) % 5 } else { truth[i] }).collect();
        let renamed: Vec<usize> = pred.iter().map(|&l| (l * 7 + shift) % 1000).collect();
        prop_assert!((adjusted_mutual_information(&truth, &pred) - adjusted_mutual_information(&truth, &renamed)).abs() < 1e-12);
        prop_assert!((adjusted_rand_index(&truth, &pred) - adjusted_rand_index(&truth, &renamed)).abs() < 1e-12);
        prop_assert_eq!(accuracy(&truth, &pred), accuracy(&truth, &renamed));
        // Symmetry of AMI and ARI.
        prop_assert!((adjusted_rand_index(&truth, &pred) - adjusted_rand_index(&pred, &truth)).abs() < 1e-12);
        prop_assert!((adjusted_mutual_information(&truth, &pred) - adjusted_mutual_information(&pred, &truth)).abs() < 1e-9);
    }

    #[test]
    fn generated_edge_counts_match_their_expectation(seed in 0u64..10_000, leaf in 50usize..300,
                                                     p0 in 0.001f64..0.05, p1 in 0.01f64..0.1, p2 in 0.05f64..0.5) {
        let config = HsbmConfig::with_equal_sizes(Tree::balanced(2, 2).unwrap(), leaf, Rates::Probabilities(vec![p0, p1, p2]));
        let expected = config.expected_edges().unwrap();
        let m = config.generate(seed).unwrap().graph.num_edges() as f64;
        // Binomial variance is below the mean: 6 standard deviations.
        prop_assert!((m - expected).abs() <= 6.0 * expected.sqrt() + 1.0, "m = {} vs {}", m, expected);
    }
}
