//! The ConnectX-3's PCI configuration space, as the guest and QEMU read it.
//!
//! QEMU's vfio-user-pci reads the whole space from the device, then emulates the BAR
//! registers (their address bits) and the MSI-X table itself; the device supplies what
//! they are: a type-0 header with BAR0 (the command interface, 1 MiB, 64-bit) and BAR2
//! (the UAR pages, 64-bit prefetchable), and a capability list of power management, PCI
//! Express (an endpoint) and MSI-X (its table and pending-bit array in BAR0, where a
//! ConnectX-3 has them). Writes change only the bits a device lets software change.
//!
//! Source: the PCI Local Bus and PCI Express Base specifications (header and capability
//! layouts, `include/uapi/linux/pci_regs.h` for the offsets), and the `lspci -vv` of a
//! ConnectX-3 (MT27500) for where its MSI-X table lives.

/// Mellanox's PCI vendor id.
pub const VENDOR_ID: u16 = 0x15b3;
/// ConnectX-3 (MT27500 family): `mlx4_pci_table` in `mlx4/main.c` binds it as a PF.
pub const DEVICE_ID: u16 = 0x1003;
/// Size of the configuration space: 4 KiB, PCI Express's extended space included.
pub const CONFIG_SIZE: usize = 4096;
/// BAR0: the HCR, the reset page, the clear-interrupt register, the catastrophic error
/// buffer, the MSI-X table.
pub const BAR0_SIZE: u64 = 1 << 20;
/// BAR2: UAR pages (doorbells) in the first half, BlueFlame registers in the second.
pub const BAR2_SIZE: u64 = 8 << 20;
/// MSI-X vectors the device offers (the HCA checks its EQs' vectors against the same).
pub const MSIX_VECTORS: u16 = hw_mlx4::model::hca::layout::MSIX_VECTORS;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x7_c000;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x7_d000;

const CAP_PM: usize = 0x40;
const CAP_PCIE: usize = 0x60;
const CAP_MSIX: usize = 0x9c;
/// A vendor-specific capability that is not the hardware's: the emulation's test
/// interface. A nonzero word written at [`TEST_CATAS_TRIGGER`] raises a catastrophic
/// error with that syndrome (`Hca::raise_catastrophic_error`), so that a scenario in
/// the guest can ask for one through sysfs' `config` file (the BARs are the driver's:
/// a mapped BAR of a bound device cannot be mmapped from user space under
/// `IO_STRICT_DEVMEM`).
const CAP_TEST: usize = 0xb0;
/// The trigger register in it.
pub const TEST_CATAS_TRIGGER: usize = CAP_TEST + 4;

/// Register offsets of the type-0 header (`pci_regs.h`).
mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const CLASS_PROG: usize = 0x09;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const BAR2: usize = 0x18;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    pub const SUBSYSTEM_ID: usize = 0x2e;
    pub const CAPABILITY_LIST: usize = 0x34;
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// The configuration space and its write masks.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    /// Bits software may change, per byte.
    writable: [u8; CONFIG_SIZE],
}

impl ConfigSpace {
    /// A ConnectX-3 right after reset.
    pub fn new() -> Self {
        let mut space = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
        };
        space.put16(reg::VENDOR_ID, VENDOR_ID);
        space.put16(reg::DEVICE_ID, DEVICE_ID);
        // Memory space, bus master, parity, SERR, INTx disable.
        space.mask16(reg::COMMAND, 0x0546);
        // Capabilities list present.
        space.put16(reg::STATUS, 0x0010);
        space.bytes[reg::REVISION] = 0x00;
        // Class 0x02 (network controller), subclass 0x80 (other), as a ConnectX-3 in
        // InfiniBand mode reports.
        space.bytes[reg::CLASS_PROG] = 0x00;
        space.bytes[reg::CLASS_PROG + 1] = 0x80;
        space.bytes[reg::CLASS_PROG + 2] = 0x02;
        space.bytes[reg::HEADER_TYPE] = 0x00;
        // 64-bit memory BARs; QEMU emulates the address bits from the region sizes.
        space.put32(reg::BAR0, 0x4);
        space.put32(reg::BAR2, 0x4 | 0x8);
        space.put16(reg::SUBSYSTEM_VENDOR_ID, VENDOR_ID);
        space.put16(reg::SUBSYSTEM_ID, 0x0051);
        space.bytes[reg::CAPABILITY_LIST] = CAP_PM as u8;
        space.bytes[reg::INTERRUPT_PIN] = 1;

        // Power management, version 3, D0 only; PMCSR's power state is writable.
        space.bytes[CAP_PM] = 0x01;
        space.bytes[CAP_PM + 1] = CAP_PCIE as u8;
        space.put16(CAP_PM + 2, 0x0003);
        space.mask16(CAP_PM + 4, 0x0003);

        // PCI Express capability, version 2, endpoint.
        space.bytes[CAP_PCIE] = 0x10;
        space.bytes[CAP_PCIE + 1] = CAP_MSIX as u8;
        space.put16(CAP_PCIE + 2, 0x0002);
        // Device capabilities: max payload 256 B, function level reset.
        space.put32(CAP_PCIE + 4, 0x1000_0001);
        // Device control: relaxed ordering, max payload/read request are software's.
        space.put16(CAP_PCIE + 8, 0x2810);
        space.mask16(CAP_PCIE + 8, 0xffff);
        // Link capabilities: 8 GT/s x8 (a ConnectX-3's PCIe 3.0 x8).
        space.put32(CAP_PCIE + 0x0c, 0x0000_0083);
        space.mask16(CAP_PCIE + 0x10, 0x0fff);
        // Link status: 8 GT/s x8.
        space.put16(CAP_PCIE + 0x12, 0x0083);
        // Device capabilities 2 / control 2 (completion timeout ranges).
        space.put32(CAP_PCIE + 0x24, 0x0000_001f);
        space.mask16(CAP_PCIE + 0x28, 0x041f);
        // Link capabilities 2: 2.5, 5 and 8 GT/s.
        space.put32(CAP_PCIE + 0x2c, 0x0000_000e);
        space.mask16(CAP_PCIE + 0x30, 0xffff);

        // MSI-X: table size N-1, enable and function mask writable; table and PBA in BAR0.
        space.bytes[CAP_MSIX] = 0x11;
        space.bytes[CAP_MSIX + 1] = CAP_TEST as u8;
        space.put16(CAP_MSIX + 2, MSIX_VECTORS - 1);
        space.mask16(CAP_MSIX + 2, 0xc000);
        space.put32(CAP_MSIX + 4, MSIX_TABLE_OFFSET);
        space.put32(CAP_MSIX + 8, MSIX_PBA_OFFSET);

        // The test interface: vendor-specific (0x09), 8 bytes, the trigger writable.
        space.bytes[CAP_TEST] = 0x09;
        space.bytes[CAP_TEST + 1] = 0;
        space.bytes[CAP_TEST + 2] = 8;
        space.mask16(TEST_CATAS_TRIGGER, 0xffff);
        space.mask16(TEST_CATAS_TRIGGER + 2, 0xffff);
        space
    }

    /// A catastrophic error syndrome written to the test interface, taken (the register
    /// reads 0 again).
    pub fn take_catas_trigger(&mut self) -> Option<u32> {
        let word = self.bytes.get(TEST_CATAS_TRIGGER..TEST_CATAS_TRIGGER + 4)?;
        let syndrome = u32::from_le_bytes(word.try_into().ok()?);
        if syndrome == 0 {
            return None;
        }
        self.put32(TEST_CATAS_TRIGGER, 0);
        Some(syndrome)
    }

    fn put16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn put32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn mask16(&mut self, offset: usize, mask: u16) {
        self.writable[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    /// Reads `data.len()` bytes at `offset`; outside the space reads as ones, as a bus does.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes `data` at `offset`, changing only writable bits.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, value) in data.iter().enumerate() {
            let Some(o) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) else {
                return;
            };
            if let (Some(byte), Some(mask)) = (self.bytes.get_mut(o), self.writable.get(o)) {
                *byte = (*byte & !mask) | (value & mask);
            }
        }
    }

    /// Whether the driver enabled bus mastering (the device may DMA).
    pub fn bus_master(&self) -> bool {
        self.bytes[reg::COMMAND] & 0x04 != 0
    }

    /// Back to the state after reset (a function-level reset or the HCA's reset register:
    /// the driver saves and restores what it needs).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}
