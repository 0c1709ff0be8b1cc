# MODVERSIONS on a stock kernel: the loader checks every symbol a tilde module imports
# against the CRC its exporter recorded, the Rust ones (exported by tilde_core.ko, named
# by rustc's hashed mangling, versioned through exports.c) as the C ones (from the stock
# Module.symvers). A copy of tilde_loopback.ko with one wrong CRC, for a Rust symbol and
# then for a C one, is refused; the module itself loads (docs/debian-stock-kernel.md).
# needs-module: tilde_loopback
# test-targets: debian-trixie-6.12
. /tilde/guest/lib.sh

driver=/tilde/drivers/tilde_loopback.ko
ip link add tl0 type dummy
ip link set tl0 up

echo "== tilde's modules are versioned"
modinfo -F vermagic "$driver" | grep -w modversions
grep -q '^tilde_core ' /proc/modules

# rdma_core (tilde_core's own), the carried kernel and core crates, and a C symbol of vmlinux.
for prefix in _RNxC9rdma_core _RNxC6kernel _RNxC4core _printk; do
	echo "== a wrong CRC for $prefix... is refused"
	symbol=$(python3 /tilde/guest/modversion_flip.py "$driver" /tmp/bad.ko "$prefix")
	refute "insmod took a module with a wrong CRC for $symbol" insmod /tmp/bad.ko netdev=tl0
	expect_dmesg "tilde_loopback: disagrees about version of symbol $symbol\$"
	refute "tilde_loopback is loaded" grep -q '^tilde_loopback ' /proc/modules
done

echo "== the module as built loads"
insmod "$driver" netdev=tl0
expect_dmesg 'tilde_loopback: tilde_lo0: registered: RoCE loopback device$'
rmmod tilde_loopback
