//! Loaders and writers: whitespace edge lists, the SocioPatterns contact format, GML, and
//! the `labels.tsv` ground-truth files.
//!
//! Node ids are arbitrary strings, numbered in order of first appearance. Files ending in
//! `.gz` are decompressed on the fly.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use rustc_hash::FxHashMap;

use crate::Error;
use crate::graph::{BuildStats, Graph};

/// Opens `path` for line reading, through gzip when the name ends in `.gz`.
fn open_lines(path: &Path) -> Result<Box<dyn BufRead>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}

/// Interns external node ids as consecutive indices.
#[derive(Default)]
struct NodeIndex {
    index: FxHashMap<String, u32>,
    ids: Vec<String>,
}

impl NodeIndex {
    fn get(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.index.insert(id.to_string(), i);
        self.ids.push(id.to_string());
        i
    }
}

/// A loaded graph and what its builder did.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The graph.
    pub graph: Graph,
    /// Self-loops dropped and duplicates merged.
    pub stats: BuildStats,
    /// Ground-truth classes per node, when the format carries them.
    pub classes: Option<Vec<String>>,
}

/// Reads a whitespace-separated edge list: `u v` or `u v w` per line, `#` or `%` starting
/// a comment, blank lines skipped. Either every edge has a weight or none has.
/// Duplicate edges are merged with their weights summed; self-loops are dropped.
pub fn read_edge_list(path: &Path) -> Result<Loaded, Error> {
    let mut nodes = NodeIndex::default();
    let mut edges = Vec::new();
    let mut weighted: Option<bool> = None;
    for (k, line) in open_lines(path)?.lines().enumerate() {
        let line_no = k + 1;
        let line = line.map_err(|e| Error::io(path, e))?;
        let content = line.split(['#', '%']).next().unwrap_or_default();
        let fields: Vec<&str> = content.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 2 || fields.len() > 3 {
            return Err(Error::parse(
                path,
                line_no,
                format!("expected `u v` or `u v w`, found {} fields", fields.len()),
            ));
        }
        let has_weight = fields.len() == 3;
        match weighted {
            None => weighted = Some(has_weight),
            Some(w) if w != has_weight => {
                return Err(Error::parse(
                    path,
                    line_no,
                    "some edges have a weight and others do not",
                ));
            }
            _ => {}
        }
        let w = if has_weight {
            let w: f64 = fields[2].parse().map_err(|_| {
                Error::parse(
                    path,
                    line_no,
                    format!("weight {:?} is not a number", fields[2]),
                )
            })?;
            if !w.is_finite() || w < 0.0 {
                return Err(Error::parse(
                    path,
                    line_no,
                    format!("weight {w} must be finite and non-negative"),
                ));
            }
            w
        } else {
            1.0
        };
        let u = nodes.get(fields[0]);
        let v = nodes.get(fields[1]);
        edges.push((u, v, w));
    }
    if nodes.ids.is_empty() {
        return Err(Error::invalid(format!("{}: no edges", path.display())));
    }
    let (graph, stats) = Graph::from_edges(nodes.ids, &edges, weighted.unwrap_or(false))?;
    Ok(Loaded {
        graph,
        stats,
        classes: None,
    })
}

/// Reads a SocioPatterns contact list (`t i j Ci Cj`, one 20 s contact per row) as a
/// weighted graph with weight `ln(number of contacts)` per pair, as in the paper and its
/// official code (pairs seen once get weight 0 and stay edges). Classes come from
/// `metadata` (`id class gender`, tab-separated) when given, else from the `Ci`/`Cj`
/// columns. Nodes are numbered in order of first appearance in the pairs sorted by id.
pub fn read_sociopatterns(path: &Path, metadata: Option<&Path>) -> Result<Loaded, Error> {
    let mut counts: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    let mut class_of: BTreeMap<u64, String> = BTreeMap::new();
    for (k, line) in open_lines(path)?.lines().enumerate() {
        let line_no = k + 1;
        let line = line.map_err(|e| Error::io(path, e))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() != 5 {
            return Err(Error::parse(
                path,
                line_no,
                format!("expected `t i j Ci Cj`, found {} fields", fields.len()),
            ));
        }
        let parse_id = |s: &str| {
            s.parse::<u64>().map_err(|_| {
                Error::parse(path, line_no, format!("node id {s:?} is not an integer"))
            })
        };
        fields[0].parse::<u64>().map_err(|_| {
            Error::parse(
                path,
                line_no,
                format!("time {:?} is not an integer", fields[0]),
            )
        })?;
        let (i, j) = (parse_id(fields[1])?, parse_id(fields[2])?);
        if i == j {
            return Err(Error::parse(
                path,
                line_no,
                format!("contact of node {i} with itself"),
            ));
        }
        class_of.entry(i).or_insert_with(|| fields[3].to_string());
        class_of.entry(j).or_insert_with(|| fields[4].to_string());
        *counts.entry((i.min(j), i.max(j))).or_insert(0) += 1;
    }
    if counts.is_empty() {
        return Err(Error::invalid(format!("{}: no contacts", path.display())));
    }
    if let Some(meta) = metadata {
        let table = read_metadata(meta)?;
        for (id, class) in class_of.iter_mut() {
            match table.get(id) {
                Some(c) => *class = c.clone(),
                None => {
                    return Err(Error::invalid(format!(
                        "{}: node {id} of {} is missing",
                        meta.display(),
                        path.display()
                    )));
                }
            }
        }
    }
    let mut nodes = NodeIndex::default();
    let mut edges = Vec::with_capacity(counts.len());
    for (&(i, j), &count) in &counts {
        let u = nodes.get(&i.to_string());
        let v = nodes.get(&j.to_string());
        edges.push((u, v, (count as f64).ln()));
    }
    let classes = nodes
        .ids
        .iter()
        .map(|id| class_of[&id.parse::<u64>().expect("interned from an integer")].clone())
        .collect();
    let (graph, stats) = Graph::from_edges(nodes.ids, &edges, true)?;
    Ok(Loaded {
        graph,
        stats,
        classes: Some(classes),
    })
}

/// Reads a SocioPatterns metadata file: `id class gender` per line, tab-separated.
fn read_metadata(path: &Path) -> Result<BTreeMap<u64, String>, Error> {
    let mut table = BTreeMap::new();
    for (k, line) in open_lines(path)?.lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 2 {
            return Err(Error::parse(path, k + 1, "expected `id class [gender]`"));
        }
        let id = fields[0].parse::<u64>().map_err(|_| {
            Error::parse(
                path,
                k + 1,
                format!("node id {:?} is not an integer", fields[0]),
            )
        })?;
        table.insert(id, fields[1].to_string());
    }
    Ok(table)
}

/// A GML value.
#[derive(Debug, Clone)]
enum GmlValue {
    Number(f64),
    Text(String),
    List(Vec<(String, GmlValue)>),
}

/// Reads a GML graph (`graph [ node [ id .. label .. ] edge [ source .. target .. weight ..
/// ] ]`). The node's `label` is its external id when present, else its `id`. Edge weights
/// come from `weight` or `value`; the graph is weighted when any edge has one. `directed
/// 1` is rejected.
pub fn read_gml(path: &Path) -> Result<Loaded, Error> {
    let mut text = String::new();
    open_lines(path)?
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, e))?;
    let items = GmlParser::new(path, &text).parse_list(true)?;
    let graph = items
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("graph", GmlValue::List(items)) => Some(items),
            _ => None,
        })
        .ok_or_else(|| Error::invalid(format!("{}: no `graph [ ... ]` block", path.display())))?;
    if graph
        .iter()
        .any(|(k, v)| k == "directed" && matches!(v, GmlValue::Number(d) if *d != 0.0))
    {
        return Err(Error::invalid(format!(
            "{}: directed graphs are not supported",
            path.display()
        )));
    }
    let mut ids: FxHashMap<String, u32> = FxHashMap::default();
    let mut names = Vec::new();
    for (k, v) in graph {
        if k != "node" {
            continue;
        }
        let GmlValue::List(fields) = v else { continue };
        let id = fields
            .iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| gml_scalar(v))
            .ok_or_else(|| Error::invalid(format!("{}: node without id", path.display())))?;
        let label = fields
            .iter()
            .find(|(k, _)| k == "label")
            .map(|(_, v)| gml_scalar(v))
            .unwrap_or_else(|| id.clone());
        if ids.insert(id.clone(), names.len() as u32).is_some() {
            return Err(Error::invalid(format!(
                "{}: node id {id} repeated",
                path.display()
            )));
        }
        names.push(label);
    }
    let mut edges = Vec::new();
    let mut weighted = false;
    for (k, v) in graph {
        if k != "edge" {
            continue;
        }
        let GmlValue::List(fields) = v else { continue };
        let endpoint = |key: &str| -> Result<u32, Error> {
            let id = fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| gml_scalar(v))
                .ok_or_else(|| Error::invalid(format!("{}: edge without {key}", path.display())))?;
            ids.get(&id).copied().ok_or_else(|| {
                Error::invalid(format!("{}: edge {key} {id} is not a node", path.display()))
            })
        };
        let (u, v) = (endpoint("source")?, endpoint("target")?);
        let w = match fields.iter().find(|(k, _)| k == "weight" || k == "value") {
            Some((_, GmlValue::Number(w))) => {
                weighted = true;
                *w
            }
            Some(_) => {
                return Err(Error::invalid(format!(
                    "{}: edge weight is not a number",
                    path.display()
                )));
            }
            None => 1.0,
        };
        edges.push((u, v, w));
    }
    if names.is_empty() {
        return Err(Error::invalid(format!(
            "{}: graph has no nodes",
            path.display()
        )));
    }
    let (graph, stats) = Graph::from_edges(names, &edges, weighted)?;
    Ok(Loaded {
        graph,
        stats,
        classes: None,
    })
}

fn gml_scalar(v: &GmlValue) -> String {
    match v {
        GmlValue::Number(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", *x as i64),
        GmlValue::Number(x) => x.to_string(),
        GmlValue::Text(s) => s.clone(),
        GmlValue::List(_) => String::from("[list]"),
    }
}

/// A small recursive-descent GML reader (keys, numbers, quoted strings, `[ ]` lists). No
/// maintained GML crate exists on crates.io; the format is a handful of tokens.
struct GmlParser<'a> {
    path: &'a Path,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
    line: usize,
}

impl<'a> GmlParser<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            chars: text.char_indices().peekable(),
            text,
            line: 1,
        }
    }

    fn skip_space(&mut self) {
        while let Some(&(_, c)) = self.chars.peek() {
            if c == '\n' {
                self.line += 1;
            }
            if c == '#' {
                while let Some(&(_, c)) = self.chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.chars.next();
                }
            } else if c.is_whitespace() {
                self.chars.next();
            } else {
                break;
            }
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let &(start, _) = self.chars.peek()?;
        let mut end = start;
        while let Some(&(i, c)) = self.chars.peek() {
            if c.is_whitespace() || c == '[' || c == ']' {
                break;
            }
            end = i + c.len_utf8();
            self.chars.next();
        }
        Some(&self.text[start..end])
    }

    fn parse_list(&mut self, top: bool) -> Result<Vec<(String, GmlValue)>, Error> {
        let mut items = Vec::new();
        loop {
            self.skip_space();
            match self.chars.peek() {
                None if top => return Ok(items),
                None => return Err(Error::parse(self.path, self.line, "unclosed `[`")),
                Some(&(_, ']')) if !top => {
                    self.chars.next();
                    return Ok(items);
                }
                Some(&(_, ']')) => return Err(Error::parse(self.path, self.line, "unmatched `]`")),
                _ => {}
            }
            let key = self.token().unwrap_or_default().to_string();
            if key.is_empty() {
                return Err(Error::parse(self.path, self.line, "expected a key"));
            }
            self.skip_space();
            let value = match self.chars.peek() {
                Some(&(_, '[')) => {
                    self.chars.next();
                    GmlValue::List(self.parse_list(false)?)
                }
                Some(&(_, '"')) => {
                    self.chars.next();
                    let mut s = String::new();
                    loop {
                        match self.chars.next() {
                            Some((_, '"')) => break,
                            Some((_, c)) => {
                                if c == '\n' {
                                    self.line += 1;
                                }
                                s.push(c)
                            }
                            None => {
                                return Err(Error::parse(self.path, self.line, "unclosed string"));
                            }
                        }
                    }
                    GmlValue::Text(s)
                }
                Some(_) => {
                    let tok = self.token().unwrap_or_default();
                    match tok.parse::<f64>() {
                        Ok(x) => GmlValue::Number(x),
                        Err(_) => {
                            return Err(Error::parse(
                                self.path,
                                self.line,
                                format!("value {tok:?} of key {key:?} is not a number or string"),
                            ));
                        }
                    }
                }
                None => {
                    return Err(Error::parse(
                        self.path,
                        self.line,
                        format!("key {key:?} has no value"),
                    ));
                }
            };
            items.push((key, value));
        }
    }
}

/// Ground-truth labels: one column per depth, coarse to fine.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    /// Node ids, in file order.
    pub node_ids: Vec<String>,
    /// `columns[d][i]` is node `i`'s label at depth `d + 1`.
    pub columns: Vec<Vec<String>>,
}

/// Reads `labels.tsv`: a header `node_id<TAB>depth_1...`, then one row per node.
pub fn read_labels(path: &Path) -> Result<Labels, Error> {
    let mut lines = open_lines(path)?.lines().enumerate();
    let header = match lines.next() {
        Some((_, line)) => line.map_err(|e| Error::io(path, e))?,
        None => return Err(Error::parse(path, 1, "empty labels file")),
    };
    let depth = header.split('\t').count().saturating_sub(1);
    if depth == 0 || !header.starts_with("node_id") {
        return Err(Error::parse(
            path,
            1,
            "header must be `node_id<TAB>depth_1...`",
        ));
    }
    let mut labels = Labels {
        node_ids: Vec::new(),
        columns: vec![Vec::new(); depth],
    };
    for (k, line) in lines {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != depth + 1 {
            return Err(Error::parse(
                path,
                k + 1,
                format!("expected {} columns, found {}", depth + 1, fields.len()),
            ));
        }
        labels.node_ids.push(fields[0].to_string());
        for d in 0..depth {
            labels.columns[d].push(fields[d + 1].to_string());
        }
    }
    Ok(labels)
}

/// Writes `labels.tsv` (see [`read_labels`]) atomically.
pub fn write_labels(path: &Path, node_ids: &[String], columns: &[Vec<usize>]) -> Result<(), Error> {
    write_atomic(path, |w| {
        write!(w, "node_id")?;
        for d in 0..columns.len() {
            write!(w, "\tdepth_{}", d + 1)?;
        }
        writeln!(w)?;
        for (i, id) in node_ids.iter().enumerate() {
            write!(w, "{id}")?;
            for col in columns {
                write!(w, "\t{}", col[i])?;
            }
            writeln!(w)?;
        }
        Ok(())
    })
}

/// Writes the graph as an edge list (`u v` or `u v w`) atomically.
pub fn write_edge_list(path: &Path, graph: &Graph) -> Result<(), Error> {
    write_atomic(path, |w| {
        writeln!(
            w,
            "# {} nodes, {} edges",
            graph.num_nodes(),
            graph.num_edges()
        )?;
        let ids = graph.node_ids();
        for u in 0..graph.num_nodes() {
            let weights = graph.neighbor_weights(u);
            for (k, &v) in graph.neighbors(u).iter().enumerate() {
                if (u as u32) < v {
                    match weights {
                        Some(ws) => writeln!(w, "{} {} {}", ids[u], ids[v as usize], ws[k])?,
                        None => writeln!(w, "{} {}", ids[u], ids[v as usize])?,
                    }
                }
            }
        }
        Ok(())
    })
}

/// Writes through a temporary file in the same directory and renames it into place.
pub fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<&mut tempfile::NamedTempFile>) -> std::io::Result<()>,
) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
    {
        let mut w = BufWriter::new(&mut tmp);
        body(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
