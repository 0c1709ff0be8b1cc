//! Recording a trace (`--trace`): register accesses and the DMA each caused, in order,
//! in the format `hw_mlx4::model::hca::trace` replays.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use hw_mlx4::model::hca::trace::TraceEvent;
use hw_mlx4::model::hca::{Dma, DmaFault};

/// Where trace lines go, if anywhere.
pub struct Tracer {
    out: RefCell<Option<BufWriter<File>>>,
}

impl Tracer {
    /// No trace.
    pub fn off() -> Self {
        Self {
            out: RefCell::new(None),
        }
    }

    /// A trace written to `path`.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: RefCell::new(Some(BufWriter::new(File::create(path)?))),
        })
    }

    /// Records one event (a write error ends the trace, never the device).
    pub fn event(&self, event: &TraceEvent) {
        let mut out = self.out.borrow_mut();
        if let Some(w) = out.as_mut() {
            if writeln!(w, "{}", event.line()).is_err() {
                *out = None;
            }
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(w) = self.out.get_mut() {
            let _ = w.flush();
        }
    }
}

/// Guest memory whose accesses are traced.
pub struct Traced<'a, D: Dma> {
    memory: &'a D,
    tracer: &'a Tracer,
}

impl<'a, D: Dma> Traced<'a, D> {
    pub fn new(memory: &'a D, tracer: &'a Tracer) -> Self {
        Self { memory, tracer }
    }
}

impl<D: Dma> Dma for Traced<'_, D> {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let result = self.memory.read(address, buf);
        self.tracer.event(&TraceEvent::DmaRead {
            address,
            len: buf.len(),
            data: buf.to_vec(),
        });
        result
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.tracer.event(&TraceEvent::DmaWrite {
            address,
            len: data.len(),
            data: data.to_vec(),
        });
        self.memory.write(address, data)
    }
}
