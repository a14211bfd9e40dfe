//! Just enough of MATLAB's Level 5 MAT-file format to read the numeric label and split
//! vectors that Oxford Flowers-102 ships (`imagelabels.mat`, `setid.mat`).
//!
//! Written here rather than taken from a crate: the maintained MAT readers pull in HDF5
//! or a full MATLAB type system, and the files need only this: little-endian data
//! elements, optionally zlib-compressed (`miCOMPRESSED`), holding `miMATRIX` arrays whose
//! real part is any numeric type (MATLAB stores doubles in the smallest integer type that
//! holds them).

use std::io::Read;
use std::path::Path;

use crate::data::source::DataError;

const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

fn malformed(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        line: 0,
        message: message.into(),
    }
}

/// One data element: its type and payload; `rest` is what follows it.
fn element<'a>(path: &Path, bytes: &'a [u8]) -> Result<(u32, &'a [u8], &'a [u8]), DataError> {
    let word = |at: usize| -> Result<u32, DataError> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
            .ok_or_else(|| malformed(path, "truncated data element"))
    };
    let first = word(0)?;
    if first >> 16 != 0 {
        // Small element: size in the upper half, payload in the second word.
        let size = (first >> 16) as usize;
        if size > 4 {
            return Err(malformed(path, "small data element larger than 4 bytes"));
        }
        let payload = bytes
            .get(4..4 + size)
            .ok_or_else(|| malformed(path, "truncated data element"))?;
        return Ok((first & 0xffff, payload, bytes.get(8..).unwrap_or(&[])));
    }
    let size = word(4)? as usize;
    let payload = bytes.get(8..8 + size).ok_or_else(|| {
        malformed(
            path,
            format!("data element of {size} bytes runs past the end"),
        )
    })?;
    // Compressed elements are not padded; everything else is padded to 8 bytes.
    let end = if first == MI_COMPRESSED {
        8 + size
    } else {
        8 + size.div_ceil(8) * 8
    };
    Ok((first, payload, bytes.get(end..).unwrap_or(&[])))
}

fn numbers(path: &Path, kind: u32, data: &[u8]) -> Result<Vec<f64>, DataError> {
    macro_rules! read {
        ($t:ty) => {
            data.chunks_exact(std::mem::size_of::<$t>())
                .map(|c| {
                    <$t>::from_le_bytes(c.try_into().expect("chunk of the type's size")) as f64
                })
                .collect()
        };
    }
    Ok(match kind {
        1 => read!(i8),
        2 => read!(u8),
        3 => read!(i16),
        4 => read!(u16),
        5 => read!(i32),
        6 => read!(u32),
        7 => read!(f32),
        9 => read!(f64),
        12 => read!(i64),
        13 => read!(u64),
        other => return Err(malformed(path, format!("data type {other} is not numeric"))),
    })
}

/// An `miMATRIX` element: its name and real values, or `None` for a non-numeric array.
fn matrix(path: &Path, payload: &[u8]) -> Result<(String, Option<Vec<f64>>), DataError> {
    let (_, flags, rest) = element(path, payload)?;
    let class = flags.first().copied().unwrap_or(0);
    let (_, _dims, rest) = element(path, rest)?;
    let (_, name, rest) = element(path, rest)?;
    let name = String::from_utf8_lossy(name).into_owned();
    // Classes 6..=15 are double, single and the integer types.
    if !(6..=15).contains(&class) {
        return Ok((name, None));
    }
    let (kind, real, _) = element(path, rest)?;
    Ok((name, Some(numbers(path, kind, real)?)))
}

/// The values of the numeric array `name` in the MAT-file at `path`, in storage order.
pub fn read_numeric(path: &Path, name: &str) -> Result<Vec<f64>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 128 || &bytes[126..128] != b"IM" {
        return Err(malformed(path, "not a little-endian Level 5 MAT-file"));
    }
    let mut rest = &bytes[128..];
    while !rest.is_empty() {
        let (kind, payload, next) = element(path, rest)?;
        rest = next;
        let found = match kind {
            MI_MATRIX => matrix(path, payload)?,
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(payload)
                    .read_to_end(&mut inflated)
                    .map_err(|e| malformed(path, format!("corrupt compressed element: {e}")))?;
                match element(path, &inflated)? {
                    (MI_MATRIX, inner, _) => matrix(path, inner)?,
                    _ => continue,
                }
            }
            _ => continue,
        };
        if found.0 == name {
            return found
                .1
                .ok_or_else(|| malformed(path, format!("variable {name:?} is not numeric")));
        }
    }
    Err(malformed(path, format!("no variable named {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tagged(kind: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = kind.to_le_bytes().to_vec();
        out.extend((payload.len() as u32).to_le_bytes());
        out.extend(payload);
        out.resize(8 + payload.len().div_ceil(8) * 8, 0);
        out
    }

    /// A row vector as MATLAB writes it: flags, dims, name, real part as uint16.
    fn matrix_element(name: &str, values: &[u16]) -> Vec<u8> {
        let mut body = tagged(6, &[6, 0, 0, 0, 0, 0, 0, 0]); // class double
        let dims: Vec<u8> = [1i32, values.len() as i32]
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect();
        body.extend(tagged(5, &dims));
        body.extend(tagged(1, name.as_bytes()));
        body.extend(tagged(
            4,
            &values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        ));
        tagged(MI_MATRIX, &body)
    }

    fn header() -> Vec<u8> {
        let mut h = vec![b' '; 128];
        h[124..126].copy_from_slice(&0x0100u16.to_le_bytes());
        h[126..128].copy_from_slice(b"IM");
        h
    }

    #[test]
    fn reads_plain_and_compressed_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("setid.mat");
        let mut bytes = header();
        bytes.extend(matrix_element("trnid", &[3, 1, 2]));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&matrix_element("tstid", &[7, 600])).unwrap();
        let z = z.finish().unwrap();
        let mut compressed = MI_COMPRESSED.to_le_bytes().to_vec();
        compressed.extend((z.len() as u32).to_le_bytes());
        compressed.extend(z);
        bytes.extend(compressed);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_numeric(&path, "trnid").unwrap(), vec![3.0, 1.0, 2.0]);
        assert_eq!(read_numeric(&path, "tstid").unwrap(), vec![7.0, 600.0]);
        let err = read_numeric(&path, "valid").unwrap_err().to_string();
        assert!(err.contains("setid.mat") && err.contains("valid"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = read_numeric(&path, "tstid").unwrap_err().to_string();
        assert!(err.contains("setid.mat"), "{err}");
        std::fs::write(&path, b"MATLAB 7.3 HDF5").unwrap();
        assert!(
            read_numeric(&path, "trnid")
                .unwrap_err()
                .to_string()
                .contains("Level 5")
        );
    }
}
