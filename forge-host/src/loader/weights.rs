//! Memory-mapped safetensors, single-file or sharded, behind one name → tensor lookup.
//!
//! Headers are parsed and validated once at open (offsets contiguous, sizes matching dtype × shape,
//! the file exactly as long as the header says), so a truncated or corrupt file fails there with its
//! name instead of deep inside a forward pass. Tensor bytes stay in the page cache until a layer asks
//! for them, and are converted straight to the target dtype and device; on CUDA, large tensors go up
//! through pinned buffers that every core fills (`upload`).
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};

use crate::{bad_input, Error, Result};

/// Where one tensor lives: which file, its dtype and shape, and its bytes' range in the mapping.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint folder, by name.
pub struct WeightStore {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    entries: HashMap<String, Entry>,
    /// The seed of a store of random weights ([`WeightStore::random`]), which has no files.
    random: Option<u64>,
    /// The names [`WeightStore::load`] has read, so that tensors nothing used can be named.
    read: Mutex<HashSet<String>>,
    /// The pinned buffers large tensors go up through, made at the first and kept for the device.
    #[cfg(feature = "cuda")]
    staging: Mutex<Option<(candle_core::cuda_backend::DeviceId, super::upload::Staging)>>,
}

impl WeightStore {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths = if index.exists() {
            shard_paths(&index)?
        } else if single.exists() {
            vec![single]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            if found.is_empty() {
                return Err(bad_input!(
                    "no weights in {}: expected model.safetensors or model.safetensors.index.json with its shards",
                    dir.display()
                ));
            }
            found.sort();
            found
        };
        Self::open_files(&paths)
    }

    /// Opens the given safetensors files; a name in several files is an error, as transformers would
    /// silently pick one.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (file_index, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the mapping is read-only; forge never writes into a checkpoint it has open, and
            // a file truncated by another process while mapped is outside what any loader can guard.
            let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
                bad_input!(
                    "{} is not a valid safetensors file ({e}); is it truncated or corrupt?",
                    path.display()
                )
            })?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let dtype = candle_dtype(info.dtype).map_err(|found| {
                    bad_input!(
                        "tensor `{name}` in {} has dtype {found}, which forge cannot load",
                        path.display()
                    )
                })?;
                let entry = Entry {
                    file: file_index,
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if let Some(previous) = entries.insert(name.clone(), entry) {
                    return Err(bad_input!(
                        "tensor `{name}` is in both {} and {}",
                        paths[previous.file].display(),
                        path.display()
                    ));
                }
            }
            files.push((path.clone(), map));
        }
        Ok(WeightStore { files, entries, random: None, ..Self::empty() })
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of `name`, if the checkpoint has it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Loads `name` as stored (its own dtype), for rewriting a checkpoint without rounding.
    pub fn load_stored(&self, name: &str, device: &Device) -> Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| bad_input!("tensor `{name}` is missing from {}", self.describe_files()))?;
        self.load(name, &entry.shape.clone(), entry.dtype, device)
    }

    /// Total number of values over all tensors.
    pub fn parameter_count(&self) -> usize {
        self.entries.values().map(|e| e.shape.iter().product::<usize>()).sum()
    }

    /// The storage dtype shared by most values (what `inspect` reports).
    pub fn storage_dtype(&self) -> Option<DType> {
        let mut by_dtype: HashMap<DType, usize> = HashMap::new();
        for e in self.entries.values() {
            *by_dtype.entry(e.dtype).or_default() += e.shape.iter().product::<usize>();
        }
        by_dtype.into_iter().max_by_key(|&(_, n)| n).map(|(d, _)| d)
    }

    /// A store with no files whose every [`WeightStore::load`] gives values of the asked shape, drawn
    /// uniformly from `seed` and the name with a spread of 1/√(last dimension) (so that products keep
    /// their inputs' scale through the layers): a model of whatever geometry a config describes, to
    /// check ops on without a checkpoint (`forge kernels`). It holds no names: `contains` is false.
    pub fn random(seed: u64) -> Self {
        WeightStore { random: Some(seed), ..Self::empty() }
    }

    fn empty() -> Self {
        WeightStore {
            files: Vec::new(),
            entries: HashMap::new(),
            random: None,
            read: Mutex::default(),
            #[cfg(feature = "cuda")]
            staging: Mutex::default(),
        }
    }

    /// Loads `name`, checking it has `shape`, converted to `dtype` on `device`.
    pub fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some(seed) = self.random {
            let named = name.bytes().fold(seed, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
            let mut rng = forge_kernels::SplitMix64::new(named);
            let spread = 1.0 / (shape.last().copied().unwrap_or(1).max(1) as f32).sqrt();
            let values =
                (0..shape.iter().product::<usize>()).map(|_| (2.0 * rng.next_f64() as f32 - 1.0) * spread);
            return Ok(Tensor::from_vec(values.collect(), shape, device)?.to_dtype(dtype)?);
        }
        let entry = self.entries.get(name).ok_or_else(|| {
            bad_input!(
                "tensor `{name}` is missing from {} (expected shape {shape:?}); is the checkpoint complete and of the architecture its config.json names?",
                self.describe_files()
            )
        })?;
        if entry.shape != shape {
            return Err(bad_input!(
                "tensor `{name}` in {} has shape {:?}, expected {shape:?} from config.json",
                self.files[entry.file].0.display(),
                entry.shape
            ));
        }
        self.read.lock().expect("no panic while holding the read set").insert(name.to_string());
        let bytes = &self.files[entry.file].1[entry.start..entry.end];
        // Convert where the data first lands: on the GPU, bf16 goes up as is; on the CPU, one pass to f32.
        let tensor = match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) if bytes.len() >= super::upload::STAGED_FROM => {
                self.staged(bytes, entry, cuda)?
            }
            _ => Tensor::from_raw_buffer(bytes, entry.dtype, shape, device)?,
        };
        Ok(tensor.to_dtype(dtype)?)
    }

    /// [`WeightStore::load`]'s upload of a large tensor to a GPU, through the staging buffers.
    #[cfg(feature = "cuda")]
    fn staged(&self, bytes: &[u8], entry: &Entry, cuda: &candle_core::CudaDevice) -> Result<Tensor> {
        use super::upload::Staging;
        let mut staging = self.staging.lock().expect("no panic while uploading");
        if staging.as_ref().is_none_or(|(id, _)| *id != cuda.id()) {
            *staging = Some((cuda.id(), Staging::new(cuda)?));
        }
        let (_, staging) = staging.as_mut().expect("made above");
        Ok(staging.upload(bytes, entry.dtype, &entry.shape, cuda)?)
    }

    /// Names no [`WeightStore::load`] has read, sorted.
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.lock().expect("no panic while holding the read set");
        let mut names: Vec<String> = self.entries.keys().filter(|n| !read.contains(*n)).cloned().collect();
        names.sort();
        names
    }

    fn describe_files(&self) -> String {
        match self.files.as_slice() {
            [(path, _)] => path.display().to_string(),
            files => format!(
                "the {} shards in {}",
                files.len(),
                files[0].0.parent().unwrap_or(Path::new(".")).display()
            ),
        }
    }
}

fn candle_dtype(dtype: StDtype) -> std::result::Result<DType, String> {
    Ok(match dtype {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F64 => DType::F64,
        StDtype::I64 => DType::I64,
        StDtype::U8 => DType::U8,
        StDtype::U32 => DType::U32,
        other => return Err(format!("{other:?}")),
    })
}

/// The shard files named by a `model.safetensors.index.json`, in first-use order.
fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_slice(&text).map_err(|e| {
        bad_input!(
            "{} is not a valid shard index ({e}); it needs a `weight_map` of tensor → file",
            index.display()
        )
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<&String> = parsed.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(bad_input!("{} lists no tensors in its `weight_map`", index.display()));
    }
    shards
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if name.contains('/') || name.contains('\\') || !path.is_file() {
                Err(bad_input!(
                    "shard `{name}` named by {} is not a file in {}",
                    index.display(),
                    dir.display()
                ))
            } else {
                Ok(path)
            }
        })
        .collect()
}
