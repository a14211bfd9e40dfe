//! Rooted trees whose leaves are the bottom communities of a hierarchical SBM.

use crate::Error;

/// A rooted tree (node 0 need not be the root). Leaves are the communities; the depth of
/// the root is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    depth: Vec<usize>,
    root: usize,
    /// Leaf nodes in depth-first order (children in index order).
    leaves: Vec<usize>,
}

impl Tree {
    /// The balanced tree with `arity` children per internal node and leaves at `depth`
    /// (`arity^depth` leaves).
    pub fn balanced(arity: usize, depth: usize) -> Result<Tree, Error> {
        if arity < 2 || depth == 0 {
            return Err(Error::invalid(format!(
                "a balanced tree needs arity >= 2 and depth >= 1 (got {arity}, {depth})"
            )));
        }
        if (arity as f64).powi(depth as i32) > 1e7 {
            return Err(Error::invalid(format!(
                "{arity}^{depth} leaves is too many"
            )));
        }
        let mut parents = vec![None];
        let mut frontier = vec![0usize];
        for _ in 0..depth {
            let mut next = Vec::new();
            for &p in &frontier {
                for _ in 0..arity {
                    parents.push(Some(p));
                    next.push(parents.len() - 1);
                }
            }
            frontier = next;
        }
        Tree::from_parents(&parents)
    }

    /// A tree from a parent list (`None` for the single root). Every internal node must
    /// have at least two children.
    pub fn from_parents(parents: &[Option<usize>]) -> Result<Tree, Error> {
        let n = parents.len();
        let roots: Vec<usize> = (0..n).filter(|&i| parents[i].is_none()).collect();
        if roots.len() != 1 {
            return Err(Error::invalid(format!(
                "a tree needs exactly one root (parent -1), found {}",
                roots.len()
            )));
        }
        let mut children = vec![Vec::new(); n];
        for (i, p) in parents.iter().enumerate() {
            if let Some(p) = *p {
                if p >= n {
                    return Err(Error::invalid(format!(
                        "node {i} has parent {p} outside 0..{n}"
                    )));
                }
                children[p].push(i);
            }
        }
        let root = roots[0];
        let mut depth = vec![usize::MAX; n];
        let mut leaves = Vec::new();
        let mut stack = vec![(root, 0usize)];
        while let Some((u, d)) = stack.pop() {
            depth[u] = d;
            if children[u].is_empty() {
                leaves.push(u);
            } else if children[u].len() == 1 {
                return Err(Error::invalid(format!(
                    "internal node {u} has a single child; every split needs >= 2"
                )));
            }
            for &c in children[u].iter().rev() {
                stack.push((c, d + 1));
            }
        }
        if let Some(u) = depth.iter().position(|&d| d == usize::MAX) {
            return Err(Error::invalid(format!(
                "node {u} is not reachable from the root (the parent list has a cycle)"
            )));
        }
        Ok(Tree {
            parent: parents.to_vec(),
            children,
            depth,
            root,
            leaves,
        })
    }

    /// Parses `binary:D`, `ternary:D`, `kary:K:D` or `parents:P0,P1,...` (`-1` for the root).
    pub fn parse(spec: &str) -> Result<Tree, Error> {
        let bad = || {
            Error::invalid(format!(
                "tree {spec:?}: expected binary:D, ternary:D, kary:K:D or parents:-1,0,0,..."
            ))
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
        match parts.as_slice() {
            ["binary", d] => Tree::balanced(2, num(d)?),
            ["ternary", d] => Tree::balanced(3, num(d)?),
            ["kary", k, d] => Tree::balanced(num(k)?, num(d)?),
            ["parents", list] => {
                let parents = list
                    .split(',')
                    .map(|p| match p.trim().parse::<i64>() {
                        Ok(-1) => Ok(None),
                        Ok(p) if p >= 0 => Ok(Some(p as usize)),
                        _ => Err(bad()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Tree::from_parents(&parents)
            }
            _ => Err(bad()),
        }
    }

    /// Number of leaves (bottom communities).
    pub fn num_leaves(&self) -> usize {
        self.leaves.len()
    }

    /// Tree node of each leaf, in depth-first order.
    pub fn leaves(&self) -> &[usize] {
        &self.leaves
    }

    /// Depth of the deepest leaf.
    pub fn max_depth(&self) -> usize {
        self.leaves
            .iter()
            .map(|&l| self.depth[l])
            .max()
            .unwrap_or(0)
    }

    /// Depth of tree node `u`.
    pub fn depth(&self, u: usize) -> usize {
        self.depth[u]
    }

    /// Children of tree node `u`.
    pub fn children(&self, u: usize) -> &[usize] {
        &self.children[u]
    }

    /// The root node.
    pub fn root(&self) -> usize {
        self.root
    }

    /// Number of tree nodes.
    pub fn num_nodes(&self) -> usize {
        self.parent.len()
    }

    /// The ancestor of tree node `u` at depth `d` (`u` itself when `d >= depth(u)`).
    pub fn ancestor_at_depth(&self, mut u: usize, d: usize) -> usize {
        while self.depth[u] > d {
            u = self.parent[u].expect("non-root nodes have a parent");
        }
        u
    }

    /// Depth of the lowest common ancestor of tree nodes `a` and `b`.
    pub fn lca_depth(&self, mut a: usize, mut b: usize) -> usize {
        while a != b {
            if self.depth[a] >= self.depth[b] {
                a = self.parent[a].expect("non-root");
            } else {
                b = self.parent[b].expect("non-root");
            }
        }
        self.depth[a]
    }

    /// Whether every leaf has the same depth and every internal node the same arity.
    pub fn balanced_arity(&self) -> Option<usize> {
        let arity = self.children[self.root].len();
        let d = self.max_depth();
        let ok = self.leaves.iter().all(|&l| self.depth[l] == d)
            && self
                .children
                .iter()
                .all(|c| c.is_empty() || c.len() == arity);
        ok.then_some(arity)
    }

    /// For each depth `1..=max_depth`, the label (0-based, depth-first order) of every leaf:
    /// its ancestor at that depth, or itself when the leaf is shallower.
    pub fn leaf_labels_per_depth(&self) -> Vec<Vec<usize>> {
        (1..=self.max_depth())
            .map(|d| {
                let mut ids = rustc_hash::FxHashMap::default();
                self.leaves
                    .iter()
                    .map(|&l| {
                        let a = self.ancestor_at_depth(l, d);
                        let next = ids.len();
                        *ids.entry(a).or_insert(next)
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_binary_tree_structure() {
        let t = Tree::parse("binary:3").unwrap();
        assert_eq!(t.num_leaves(), 8);
        assert_eq!(t.max_depth(), 3);
        let l = t.leaves();
        assert_eq!(t.lca_depth(l[0], l[1]), 2);
        assert_eq!(t.lca_depth(l[0], l[2]), 1);
        assert_eq!(t.lca_depth(l[0], l[7]), 0);
        assert_eq!(t.lca_depth(l[3], l[3]), 3);
        let labels = t.leaf_labels_per_depth();
        assert_eq!(labels[0], vec![0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(labels[1], vec![0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(labels[2], (0..8).collect::<Vec<_>>());
        assert_eq!(t.balanced_arity(), Some(2));
    }

    #[test]
    fn parent_lists_and_their_errors() {
        // root 0 with children 1, 2; node 1 has children 3, 4; node 2 is a leaf.
        let t = Tree::parse("parents:-1,0,0,1,1").unwrap();
        assert_eq!(t.num_leaves(), 3);
        assert_eq!(t.balanced_arity(), None);
        assert_eq!(t.leaf_labels_per_depth()[1], vec![0, 1, 2]);
        assert!(Tree::parse("parents:-1,0").is_err(), "single child");
        assert!(Tree::parse("parents:-1,-1").is_err(), "two roots");
        assert!(Tree::parse("parents:1,0").is_err(), "no root");
        assert!(Tree::parse("octal:3").is_err());
    }
}
