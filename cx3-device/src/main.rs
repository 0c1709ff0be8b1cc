//! `cx3-device`: an emulated ConnectX-3 (PCI 15b3:1003, two InfiniBand ports cabled to
//! each other) for QEMU's `vfio-user-pci`.
//!
//! The device itself is `hw_mlx4::model::hca::Hca`, which the host tests drive without
//! QEMU; this program is its transport: it serves the vfio-user protocol on a UNIX
//! socket (rust-vmm's `vfio_user` server), decodes region accesses into configuration
//! space, BAR0 and BAR2 accesses, maps the guest memory QEMU shares for DMA, and turns
//! the interrupts the HCA raises into writes of the eventfds QEMU handed over for MSI-X.
//!
//! Doorbells reach the device one of two ways (`--doorbells`): `socket`, the default,
//! leaves BAR2 unmapped, so every doorbell is an MMIO message over the socket that the
//! device handles before the guest's store completes; `mapped` maps BAR2 into the guest
//! (see `mapped_uar`), so a doorbell is a store to memory that a thread of the device
//! watches for. BAR0 (the command interface, the reset) is always trapped.
//!
//! Usage: `cx3-device --socket PATH [--log PATH] [--trace PATH] [--doorbells
//! socket|mapped]`; `--trace` records
//! every register access and the DMA each caused, for `hw_mlx4::model::hca::trace`'s
//! replay on the host. It serves one connection, and exits
//! when QEMU closes it: status 0 if the driver made no mistake the device saw, 1 if it
//! did (each is an `error:` line in the log), 2 if the transport failed.

mod guest_memory;
mod mapped_uar;
mod pci;
mod tracing;

use std::fs::File;
use std::io::Write;
use std::mem::size_of;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hw_mlx4::model::hca::{Hca, HcaEvent};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{IrqInfo, Server, ServerBackend, ServerRegion, SparseArea};

use guest_memory::GuestMemory;
use hw_mlx4::model::hca::trace::TraceEvent;
use mapped_uar::{Doorbell, MappedUar};
use pci::ConfigSpace;
use tracing::{Traced, Tracer};

/// The device's log: every line goes to the log file (and stderr), and `error:` lines
/// are counted, since each is a driver mistake or a fault the runner fails on.
struct Log {
    out: Box<dyn Write + Send>,
    errors: u64,
}

/// Error lines written before the rest are only counted (a driver that repeats a mistake
/// on every access would fill the disk).
const LOGGED_ERRORS: u64 = 1000;

impl Log {
    fn line(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn error(&mut self, line: &str) {
        self.errors += 1;
        if self.errors <= LOGGED_ERRORS {
            self.line(&format!("error: {line}"));
        }
        if self.errors == LOGGED_ERRORS + 1 {
            self.line("error: more errors follow; only their count is logged");
        }
    }
}

static LOG: Mutex<Option<Log>> = Mutex::new(None);

fn log_line(line: &str) {
    if let Ok(mut log) = LOG.lock() {
        if let Some(log) = log.as_mut() {
            log.line(line);
        }
    }
}

fn log_error(line: &str) {
    if let Ok(mut log) = LOG.lock() {
        if let Some(log) = log.as_mut() {
            log.error(line);
        }
    }
}

/// The `log` crate's records (the vfio-user server's own) go to the device log.
struct ServerLogger;

impl log::Log for ServerLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        // A message the server could not serve is the device's failure (QEMU sees an
        // error reply): an `error:` line, which fails the run.
        if record.level() == log::Level::Error {
            log_error(&format!("vfio-user: {}", record.args()));
        } else if self.enabled(record.metadata()) {
            log_line(&format!("vfio-user: {}: {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

static SERVER_LOGGER: ServerLogger = ServerLogger;

/// The device as the vfio-user server sees it.
struct Cx3 {
    config: ConfigSpace,
    hca: Hca,
    memory: GuestMemory,
    /// The eventfd of each MSI-X vector QEMU enabled.
    msix: Vec<Option<File>>,
    intx: Option<File>,
    /// Where accesses and DMA are traced (`--trace`), if anywhere.
    tracer: Tracer,
    bus_master: bool,
    /// BAR2 as guest memory, with `--doorbells mapped`.
    uar: Option<Arc<MappedUar>>,
    /// The doorbells taken from it by the last pass (kept to reuse the allocation).
    taken: Vec<Doorbell>,
    /// Doorbells that came as socket messages, and taken from the mapped pages.
    socket_doorbells: u64,
    mapped_doorbells: u64,
}

impl Cx3 {
    fn new(tracer: Tracer, uar: Option<Arc<MappedUar>>) -> Self {
        Self {
            config: ConfigSpace::new(),
            hca: Hca::new(),
            memory: GuestMemory::default(),
            msix: Vec::new(),
            intx: None,
            tracer,
            bus_master: false,
            uar,
            taken: Vec::new(),
            socket_doorbells: 0,
            mapped_doorbells: 0,
        }
    }

    /// Handles the doorbells written to the mapped BAR2 since the last pass, as if each
    /// had come over the socket; whether there were any.
    fn take_doorbells(&mut self) -> bool {
        let Some(uar) = self.uar.clone() else {
            return false;
        };
        let mut taken = std::mem::take(&mut self.taken);
        uar.take(&mut taken);
        for doorbell in &taken {
            self.tracer.event(&TraceEvent::WatchedWrite {
                offset: doorbell.offset,
                data: doorbell.data().to_vec(),
            });
            let dma = Traced::new(&self.memory, &self.tracer);
            self.hca
                .bar2_watched_write(&dma, doorbell.offset, doorbell.data());
        }
        let any = !taken.is_empty();
        self.mapped_doorbells += taken.len() as u64;
        self.taken = taken;
        if any {
            self.flush_events();
        }
        any
    }

    fn bar2_write(&mut self, offset: u64, data: &[u8]) {
        self.tracer.event(&TraceEvent::Write {
            bar: 2,
            offset,
            data: data.to_vec(),
        });
        let dma = Traced::new(&self.memory, &self.tracer);
        self.hca.bar2_write(&dma, offset, data);
    }

    /// Tells the HCA (and the trace) when the driver turns bus mastering on or off.
    fn sync_bus_master(&mut self) {
        let on = self.config.bus_master();
        if on != self.bus_master {
            self.bus_master = on;
            self.tracer.event(&TraceEvent::BusMaster(on));
            self.hca.set_bus_master(on);
        }
    }

    /// Delivers what the HCA raised and logs what it reported.
    fn flush_events(&mut self) {
        for event in self.hca.take_events() {
            match event {
                HcaEvent::Interrupt { vector } => self.interrupt(vector),
                HcaEvent::Info(line) => log_line(&line),
                HcaEvent::DriverError(line) => log_error(&line),
            }
        }
    }

    /// The device's timer: retries sends that met a receiver not ready, flushes receives
    /// posted to QPs in error (posting a receive rings no doorbell on mlx4).
    fn tick(&mut self) {
        if !self.hca.needs_tick() {
            return;
        }
        self.tracer.event(&TraceEvent::Tick);
        let Self {
            hca,
            memory,
            tracer,
            ..
        } = self;
        hca.tick(&Traced::new(memory, tracer));
        self.flush_events();
    }

    fn interrupt(&mut self, vector: u16) {
        // MSI-X when the driver enabled it (QEMU handed over its vectors); INTx only when
        // it did not.
        let fd = if self.msix.is_empty() {
            self.intx.as_mut()
        } else {
            self.msix
                .get_mut(usize::from(vector))
                .and_then(Option::as_mut)
        };
        match fd {
            Some(fd) => {
                if let Err(e) = fd.write_all(&1u64.to_ne_bytes()) {
                    log_error(&format!("interrupt vector {vector}: eventfd write: {e}"));
                }
            }
            // The driver masked or has not enabled the vector yet; a real device would
            // set the pending bit. The driver polls its EQs on enable, so nothing is lost.
            None => log_line(&format!(
                "interrupt vector {vector}: no eventfd (not enabled)"
            )),
        }
    }
}

/// The device shared between the vfio-user server's thread and the timer's.
struct Shared(Arc<Mutex<Cx3>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Cx3) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut device = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("the device's lock is poisoned"))?;
        f(&mut device)
    }
}

impl ServerBackend for Shared {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.with(|d| d.region_read(region, offset, data))
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.with(|d| d.region_write(region, offset, data))
    }

    fn dma_map(
        &mut self,
        flags: vfio_user::DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        self.with(|d| d.dma_map(flags, offset, address, size, fd))
    }

    fn dma_unmap(
        &mut self,
        flags: vfio_user::DmaUnmapFlags,
        address: u64,
        size: u64,
    ) -> std::io::Result<()> {
        self.with(|d| d.dma_unmap(flags, address, size))
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.with(ServerBackend::reset)
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        self.with(|d| d.set_irqs(index, flags, start, count, fds))
    }
}

impl ServerBackend for Cx3 {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        // What the driver wrote to the mapped doorbells before this access arrives first,
        // as its posted writes would on PCIe.
        self.take_doorbells();
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config.read(offset, data),
            VFIO_PCI_BAR0_REGION_INDEX | VFIO_PCI_BAR2_REGION_INDEX => {
                let bar = if region == VFIO_PCI_BAR0_REGION_INDEX {
                    0
                } else {
                    2
                };
                if bar == 0 {
                    self.hca.bar0_read(offset, data);
                } else {
                    self.hca.bar2_read(offset, data);
                }
                self.tracer.event(&TraceEvent::Read {
                    bar,
                    offset,
                    data: data.to_vec(),
                });
            }
            _ => data.fill(0xff),
        }
        self.flush_events();
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.take_doorbells();
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                self.config.write(offset, data);
                self.sync_bus_master();
                if let Some(syndrome) = self.config.take_catas_trigger() {
                    self.hca.raise_catastrophic_error(syndrome);
                }
            }
            VFIO_PCI_BAR0_REGION_INDEX => {
                self.tracer.event(&TraceEvent::Write {
                    bar: 0,
                    offset,
                    data: data.to_vec(),
                });
                let dma = Traced::new(&self.memory, &self.tracer);
                self.hca.bar0_write(&dma, offset, data);
                if self.hca.reset_requested() {
                    // The reset register resets the function, config space included; the
                    // driver restores what it saved.
                    self.config.reset();
                    self.bus_master = false;
                }
            }
            VFIO_PCI_BAR2_REGION_INDEX => {
                if self.uar.is_some() && self.socket_doorbells == 0 {
                    // QEMU did not map the sparse area: the run does not test what it
                    // says it does.
                    log_error("BAR2 is offered mapped, but QEMU sent a write over the socket");
                }
                self.socket_doorbells += 1;
                self.bar2_write(offset, data);
            }
            _ => log_error(&format!(
                "write to region {region} at {offset:#x}, which the device does not have"
            )),
        }
        self.flush_events();
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: vfio_user::DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        match fd {
            Some(fd) => {
                log_line(&format!(
                    "dma_map {address:#x}+{size:#x} (file offset {offset:#x}, {flags:?})"
                ));
                self.memory.map(address, size, fd, offset)
            }
            // ROM and other ranges QEMU does not back with a shared file: not reachable
            // by DMA, as on a platform where the IOMMU does not map them.
            None => {
                log_line(&format!(
                    "dma_map {address:#x}+{size:#x} without a file: not mapped"
                ));
                Ok(())
            }
        }
    }

    fn dma_unmap(
        &mut self,
        _flags: vfio_user::DmaUnmapFlags,
        address: u64,
        size: u64,
    ) -> std::io::Result<()> {
        log_line(&format!("dma_unmap {address:#x}+{size:#x}"));
        self.memory.unmap(address, size);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        log_line("function reset");
        self.tracer.event(&TraceEvent::Reset);
        self.config.reset();
        self.bus_master = false;
        if let Some(uar) = &self.uar {
            uar.clear();
        }
        self.hca.reset();
        self.flush_events();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        log_line(&format!(
            "set_irqs index {index} flags {flags:#x} start {start} count {count} fds {}",
            fds.len()
        ));
        let trigger = flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0;
        match index {
            VFIO_PCI_MSIX_IRQ_INDEX if trigger => {
                // No vector beyond those the device offers (QEMU sizes its table from
                // the same count).
                let vectors = usize::from(hw_mlx4::model::hca::layout::MSIX_VECTORS);
                let start = (start as usize).min(vectors);
                let end = start.saturating_add(count as usize).min(vectors);
                if self.msix.len() < end {
                    self.msix.resize_with(end, || None);
                }
                // VFIO's eventfd -1 unassigns a vector; vfio-user sends no descriptor for
                // it, so a message with none unassigns its range (QEMU releases vectors
                // one by one as the guest frees them, `pci_free_irq_vectors`).
                if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 && fds.is_empty() {
                    for slot in self.msix.iter_mut().take(end).skip(start) {
                        *slot = None;
                    }
                    return Ok(());
                }
                if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 && fds.len() != end - start {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} eventfds for {} vectors", fds.len(), end - start),
                    ));
                }
                if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                    let mut fds = fds.into_iter();
                    for slot in self.msix.iter_mut().take(end).skip(start) {
                        *slot = fds.next();
                    }
                } else if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
                    self.msix.clear();
                }
            }
            VFIO_PCI_INTX_IRQ_INDEX if trigger => {
                if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                    self.intx = fds.into_iter().next();
                } else if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
                    self.intx = None;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The regions QEMU asks about: config space and BAR0 trapped; BAR2 trapped, or one
/// sparse mmap area over `uar` when it is mapped.
fn regions(uar: Option<&MappedUar>) -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let size = match index {
                VFIO_PCI_CONFIG_REGION_INDEX => pci::CONFIG_SIZE as u64,
                VFIO_PCI_BAR0_REGION_INDEX => pci::BAR0_SIZE,
                VFIO_PCI_BAR2_REGION_INDEX => pci::BAR2_SIZE,
                _ => 0,
            };
            let mapped = uar.filter(|_| index == VFIO_PCI_BAR2_REGION_INDEX);
            let mut flags = if size > 0 {
                VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
            } else {
                0
            };
            if mapped.is_some() {
                flags |= VFIO_REGION_INFO_FLAG_MMAP;
            }
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: size_of::<vfio_region_info>() as u32,
                    index,
                    size,
                    flags,
                    ..Default::default()
                },
                sparse_areas: mapped
                    .map(|_| SparseArea {
                        area: vfio_region_sparse_mmap_area { offset: 0, size },
                    })
                    .into_iter()
                    .collect(),
                mmap_fd: mapped.map(MappedUar::fd),
            }
        })
        .collect()
}

fn irqs() -> Vec<IrqInfo> {
    (0..VFIO_PCI_NUM_IRQS)
        .map(|index| {
            let count = match index {
                VFIO_PCI_INTX_IRQ_INDEX => 1,
                VFIO_PCI_MSIX_IRQ_INDEX => u32::from(pci::MSIX_VECTORS),
                _ => 0,
            };
            IrqInfo {
                index,
                count,
                flags: if count > 0 { VFIO_IRQ_INFO_EVENTFD } else { 0 },
            }
        })
        .collect()
}

struct Args {
    socket: PathBuf,
    log: Option<PathBuf>,
    trace: Option<PathBuf>,
    mapped_doorbells: bool,
}

const USAGE: &str =
    "usage: cx3-device --socket PATH [--log PATH] [--trace PATH] [--doorbells socket|mapped]";

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut log = None;
    let mut trace = None;
    let mut mapped_doorbells = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from),
            "--log" => log = args.next().map(PathBuf::from),
            "--trace" => trace = args.next().map(PathBuf::from),
            "--doorbells" => {
                mapped_doorbells = match args.next().as_deref() {
                    Some("socket") => false,
                    Some("mapped") => true,
                    _ => return Err(USAGE.to_string()),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        socket: socket.ok_or(USAGE)?,
        log,
        trace,
        mapped_doorbells,
    })
}

/// The mapped doorbells' watcher: a pass over the UAR pages, again at once while
/// doorbells keep coming, and after a short sleep once they stop (a spinning watcher
/// would take a core from the guest's vCPU thread on a small machine).
fn watch_doorbells(device: &Mutex<Cx3>, done: &AtomicBool) {
    /// How long the watcher keeps spinning after the last doorbell.
    const LINGER: Duration = Duration::from_micros(200);
    /// Its sleep between passes when idle.
    const IDLE_SLEEP: Duration = Duration::from_micros(20);
    // The kernel's default timer slack (50 µs) would make every idle sleep three times
    // as long as asked.
    // SAFETY: sets this thread's timer slack to 1 ns; touches no memory.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let mut last = std::time::Instant::now();
    while !done.load(Ordering::Relaxed) {
        let any = match device.lock() {
            Ok(mut device) => device.take_doorbells(),
            Err(_) => return,
        };
        if any {
            last = std::time::Instant::now();
        } else if last.elapsed() < LINGER {
            std::thread::yield_now();
        } else {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("cx3-device: {e}");
            return ExitCode::from(2);
        }
    };
    let out: Box<dyn Write + Send> = match &args.log {
        Some(path) => match File::create(path) {
            Ok(file) => Box::new(file),
            Err(e) => {
                eprintln!("cx3-device: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Box::new(std::io::stderr()),
    };
    if let Ok(mut log) = LOG.lock() {
        *log = Some(Log { out, errors: 0 });
    }
    let _ = log::set_logger(&SERVER_LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));

    let uar = if args.mapped_doorbells {
        match MappedUar::new(pci::BAR2_SIZE) {
            Ok(uar) => Some(Arc::new(uar)),
            Err(e) => {
                eprintln!("cx3-device: BAR2 memory: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let server = match Server::new(&args.socket, true, irqs(), regions(uar.as_deref())) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cx3-device: {}: {e:?}", args.socket.display());
            return ExitCode::from(2);
        }
    };
    log_line(&format!(
        "ConnectX-3 {:04x}:{:04x} serving {}, doorbells {}",
        pci::VENDOR_ID,
        pci::DEVICE_ID,
        args.socket.display(),
        if uar.is_some() {
            "mapped (BAR2 in the guest, watched)"
        } else {
            "over the socket"
        }
    ));
    let tracer = match &args.trace {
        Some(path) => match Tracer::to_file(path) {
            Ok(tracer) => tracer,
            Err(e) => {
                eprintln!("cx3-device: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Tracer::off(),
    };
    let device = Arc::new(Mutex::new(Cx3::new(tracer, uar.clone())));
    let done = Arc::new(AtomicBool::new(false));
    let timer = {
        let (device, done) = (Arc::clone(&device), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                if let Ok(mut device) = device.lock() {
                    device.tick();
                }
            }
        })
    };
    let watcher = uar.map(|_| {
        let (device, done) = (Arc::clone(&device), Arc::clone(&done));
        std::thread::spawn(move || watch_doorbells(&device, &done))
    });
    let served = server.run(&mut Shared(Arc::clone(&device)));
    done.store(true, Ordering::Relaxed);
    let _ = timer.join();
    if let Some(watcher) = watcher {
        let _ = watcher.join();
    }
    let summary = match device.lock() {
        Ok(mut device) => {
            device.flush_events();
            format!(
                "{}; doorbells: {} over the socket, {} from the mapped BAR2",
                device.hca.summary(),
                device.socket_doorbells,
                device.mapped_doorbells
            )
        }
        Err(_) => "the device's lock is poisoned".to_string(),
    };
    log_line(&format!("connection closed: {summary}"));
    let errors = LOG
        .lock()
        .ok()
        .and_then(|log| log.as_ref().map(|l| l.errors))
        .unwrap_or(0);
    match served {
        Err(e) => {
            log_error(&format!("vfio-user transport: {e:?}"));
            ExitCode::from(2)
        }
        Ok(()) if errors > 0 => {
            log_line(&format!("{errors} error(s) reported"));
            ExitCode::from(1)
        }
        Ok(()) => ExitCode::SUCCESS,
    }
}
