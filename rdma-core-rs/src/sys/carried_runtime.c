// SPDX-License-Identifier: GPL-2.0
/*
 * What the kernel's Rust runtime needs from vmlinux that a kernel built without Rust does
 * not have; linked into tilde_core.ko only where `cargo xtask kmod` carries the runtime
 * (docs/debian-stock-kernel.md).
 *
 * The kernel crate prints through `_printk` with a `%pA` conversion whose argument is a
 * Rust `fmt::Arguments`: vsprintf hands it to the crate's rust_fmt_argument, but only in
 * a vmlinux built with CONFIG_RUST; without, it WARNs and prints "(%pA?)". The tree that
 * builds the carried runtime has its `rust/kernel/print.rs` call tilde_carried_printk
 * instead (the one change tilde makes to the runtime's source), which renders the
 * arguments with that same rust_fmt_argument and prints the text with `%s`.
 *
 * The runtime's C helpers call vrealloc for the crate's `Vmalloc` allocator; vmlinux has
 * it but exports it to no module (only its own Rust used it), so it is made here from
 * what vmlinux does export.
 */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

/* rust/kernel/print.rs: renders `*(const fmt::Arguments *)ptr` into [buf, end). */
char *rust_fmt_argument(char *buf, char *end, const void *ptr);
int tilde_carried_printk(const char *fmt, ...);

/*
 * The crate's two formats after the two bytes of their KERN_* prefix
 * (print.rs, `format_strings`): a line with the module's name, and a continuation.
 */
#define TILDE_RUST_LINE "%s: %pA"
#define TILDE_RUST_CONT "%pA"

int tilde_carried_printk(const char *fmt, ...)
{
	/*
	 * One line of text. Longer lines are cut here: the crate's messages are one-line
	 * diagnostics, and the frame must stay well under the kernel's frame-size warning.
	 */
	char text[512];
	char line_fmt[sizeof("\001?%s: %s")];
	const char *module = NULL;
	const void *args;
	va_list ap;
	char *end;

	va_start(ap, fmt);
	if (fmt[0] == KERN_SOH_ASCII && fmt[1] && !strcmp(fmt + 2, TILDE_RUST_LINE)) {
		module = va_arg(ap, const char *);
	} else if (!(fmt[0] == KERN_SOH_ASCII && fmt[1] && !strcmp(fmt + 2, TILDE_RUST_CONT))) {
		/* Not one of the crate's formats: nothing to render. */
		int printed = vprintk(fmt, ap);

		va_end(ap);
		return printed;
	}
	args = va_arg(ap, const void *);
	va_end(ap);

	end = rust_fmt_argument(text, text + sizeof(text) - 1, args);
	/* Like vsnprintf, it returns where the whole text would have ended. */
	if (end > text + sizeof(text) - 1)
		end = text + sizeof(text) - 1;
	*end = '\0';

	/* The level stays in the format, where printk reads it. */
	line_fmt[0] = fmt[0];
	line_fmt[1] = fmt[1];
	if (module) {
		strscpy(line_fmt + 2, "%s: %s", sizeof(line_fmt) - 2);
		return _printk(line_fmt, module, text);
	}
	strscpy(line_fmt + 2, "%s", sizeof(line_fmt) - 2);
	return _printk(line_fmt, text);
}

/*
 * vrealloc as 6.12 defines it: a new allocation for no memory, vfree for size 0, else
 * the memory moved to (or kept in) an allocation of the new size. kvrealloc, which is
 * exported, hands a vmalloc address to vmlinux's own vrealloc; for no memory it would
 * try kmalloc first, which a vmalloc allocator's memory must never be.
 */
void *vrealloc_noprof(const void *p, size_t size, gfp_t flags)
{
	if (!p)
		return size ? __vmalloc_noprof(size, flags) : NULL;
	if (WARN_ON_ONCE(!is_vmalloc_addr(p)))
		return NULL;
	return kvrealloc_noprof(p, size, flags);
}
