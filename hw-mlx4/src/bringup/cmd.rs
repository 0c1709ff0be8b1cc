//! The firmware command interface: commands posted through the HCR (Host Command
//! Register) in BAR0 and completed by polling its go bit.
//!
//! Follows `drivers/net/ethernet/mellanox/mlx4/cmd.c`: `mlx4_cmd_init` (the toggle starts
//! at 1), `cmd_pending`, `mlx4_cmd_post`, `mlx4_cmd_poll` and `mlx4_status_to_errno`. The
//! register layout is [`crate::wire::cmd`], shared with the device model.

use crate::wire::cmd::{hcr, CmdStatus, HCR_BASE};

/// What the command interface needs of the platform: BAR0's registers and a clock.
///
/// The kernel implements it over the ioremapped BAR (`__raw_readl`/`__raw_writel` with
/// the byte swaps of `cpu_to_be32`, `wmb()`, `jiffies`, `cond_resched()`, `msleep()`);
/// the host tests over `model::hca::Hca`.
pub trait CommandEdge {
    /// Reads the 32-bit register at byte `offset` of BAR0, which the device keeps
    /// big-endian, and returns its value.
    fn bar0_read_be32(&mut self, offset: u64) -> u32;
    /// Writes `value` big-endian to the 32-bit register at byte `offset` of BAR0.
    fn bar0_write_be32(&mut self, offset: u64, value: u32);
    /// Orders every register write before it ahead of every write after it (`wmb()`).
    fn write_barrier(&mut self);
    /// A monotonic clock, in microseconds.
    fn now_us(&mut self) -> u64;
    /// Called on each turn of a polling loop: the kernel yields the CPU here.
    fn relax(&mut self);
    /// Sleeps for `ms` milliseconds.
    fn sleep_ms(&mut self, ms: u32);
}

/// How long a command may run before the driver gives up on it, in microseconds
/// (`MLX4_CMD_TIME_CLASS_A`, `_B` and `_C` are all 60 s).
pub const COMMAND_TIMEOUT_US: u64 = 60_000_000;

/// How long the driver waits for the HCR to become free before posting, in
/// microseconds (`GO_BIT_TIMEOUT_MSECS`).
pub const GO_BIT_TIMEOUT_US: u64 = 10_000_000;

/// The token of a polled command (`CMD_POLL_TOKEN`): only event-driven completions
/// carry a token that means something.
pub const POLL_TOKEN: u16 = 0xffff;

/// Why a command did not complete successfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdError {
    /// The firmware executed the command and reported this status.
    Failed {
        /// The command's opcode.
        opcode: u16,
        /// The PRM status the firmware returned.
        status: CmdStatus,
    },
    /// The firmware returned a status byte the PRM does not define.
    UnknownStatus {
        /// The command's opcode.
        opcode: u16,
        /// The status byte as read.
        raw: u8,
    },
    /// The HCR stayed busy (go set, or the toggle not yet flipped by the device) for
    /// [`GO_BIT_TIMEOUT_US`]: the command was never posted.
    Busy {
        /// The opcode that could not be posted.
        opcode: u16,
    },
    /// The command was posted and the device did not clear go within its timeout.
    Timeout {
        /// The command's opcode.
        opcode: u16,
    },
    /// The device raised a catastrophic error while the command waited, or before it
    /// was posted: its firmware executes no command until the function is reset
    /// (upstream's internal error state, `CMD_STAT_INTERNAL_ERR`). The catastrophic
    /// error poll resets it; the command is not posted again.
    InternalError {
        /// The opcode given up on or refused.
        opcode: u16,
    },
    /// An earlier command timed out: the HCR's state is unknown, so no command is posted
    /// any more (upstream enters its error state, `mlx4_cmd_reset_flow`). Only a reset of
    /// the function brings the interface back.
    Wedged {
        /// The opcode that was refused.
        opcode: u16,
    },
    /// A command EQE whose token is not the one of the command waiting for completion:
    /// a completion of a command given up on, or a forged one. It is refused, and the
    /// waiting command still waits (`mlx4_cmd_event` drops it).
    StaleToken {
        /// The token the EQE carried.
        token: u16,
    },
    /// An event-driven command was asked for while the interface polls, or while another
    /// event-driven command is outstanding (the owner serializes).
    NotInEventMode {
        /// The opcode that was refused.
        opcode: u16,
    },
}

/// One command, as `mlx4_cmd`, `mlx4_cmd_box` and `mlx4_cmd_imm` take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// `MLX4_CMD_*`.
    pub opcode: u16,
    /// The op modifier (4 bits).
    pub op_modifier: u8,
    /// The in-modifier.
    pub in_modifier: u32,
    /// An immediate input, or the bus address of the input mailbox.
    pub in_param: u64,
    /// The bus address of the output mailbox, or 0 for an immediate or no output.
    pub out_param: u64,
    /// How long the command may run, in microseconds.
    pub timeout_us: u64,
}

impl Command {
    /// A command with no parameters and the default timeout.
    pub const fn new(opcode: u16) -> Self {
        Self {
            opcode,
            op_modifier: 0,
            in_modifier: 0,
            in_param: 0,
            out_param: 0,
            timeout_us: COMMAND_TIMEOUT_US,
        }
    }

    /// With an immediate input or an input mailbox's bus address.
    pub const fn in_param(mut self, in_param: u64) -> Self {
        self.in_param = in_param;
        self
    }

    /// With an output mailbox's bus address.
    pub const fn out_param(mut self, out_param: u64) -> Self {
        self.out_param = out_param;
        self
    }

    /// With an in-modifier.
    pub const fn in_modifier(mut self, in_modifier: u32) -> Self {
        self.in_modifier = in_modifier;
        self
    }

    /// With an op modifier.
    pub const fn op_modifier(mut self, op_modifier: u8) -> Self {
        self.op_modifier = op_modifier;
        self
    }
}

/// What a finished command left in the HCR (or, later, in its command EQE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The status byte.
    pub status: u8,
    /// `out_param` as the device left it: the result of an immediate-output command.
    pub out_param: u64,
}

/// Maps a completion's status byte to a result (`mlx4_status_to_errno`).
///
/// Polled and event-driven completions share it: `mlx4_cmd_event` hands the status of a
/// command EQE to the same mapping.
pub fn status_result(opcode: u16, status: u8) -> Result<(), CmdError> {
    match CmdStatus::from_raw(status) {
        Some(CmdStatus::Ok) => Ok(()),
        Some(status) => Err(CmdError::Failed { opcode, status }),
        None => Err(CmdError::UnknownStatus {
            opcode,
            raw: status,
        }),
    }
}

/// The driver's side of the HCR: the toggle it expects next, and whether the interface
/// still works.
///
/// Only one command may be in the HCR at a time; the owner serializes (upstream takes
/// `poll_sem`). Completion is by polling. Event-driven completion, once the driver has
/// EQs (`mlx4_cmd_use_events`), posts through [`CommandInterface::post`] with `event`
/// set and a context's token, then waits for the command EQE instead of calling
/// [`CommandInterface::poll`], and maps its status with [`status_result`].
#[derive(Debug)]
pub struct CommandInterface {
    /// The value of the HCR's `t` bit the next post writes. `cmd_pending` calls the HCR
    /// busy while its `t` equals this: the device has not yet taken the last post.
    toggle: bool,
    wedged: bool,
    /// Completion by command EQEs (`mlx4_cmd_use_events`) rather than by polling.
    use_events: bool,
    /// The token the next event-driven command carries.
    next_token: u16,
    /// The event-driven command posted and not yet completed: its opcode and token.
    waiting: Option<(u16, u16)>,
    /// Command EQEs refused for their token.
    stale: u32,
    /// The device was reset under the driver after a catastrophic error: commands
    /// complete at once, successfully, without reaching it (upstream's internal error
    /// state, `mlx4_internal_err_ret_value`), so a teardown runs to its end and frees
    /// what the device forgot.
    device_lost: bool,
}

/// Tokens of event-driven commands stay below this: [`POLL_TOKEN`] is never one.
const TOKEN_MASK: u16 = 0x7fff;

impl Default for CommandInterface {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandInterface {
    /// The interface after `mlx4_cmd_init`: the first post writes `t` = 1, since a
    /// device out of reset reads `t` = 0.
    pub const fn new() -> Self {
        Self {
            toggle: true,
            wedged: false,
            use_events: false,
            next_token: 0,
            waiting: None,
            stale: 0,
            device_lost: false,
        }
    }

    /// Enters the lost-device state (see the field's doc): only after the function was
    /// reset, when nothing the driver gave the device is used by it any more.
    pub fn enter_device_lost(&mut self) {
        self.device_lost = true;
        // The reset ended whatever the device was running: nothing it was given is in
        // use any more, whatever a timeout or the catastrophic error left.
        self.wedged = false;
        self.use_events = false;
        self.waiting = None;
    }

    /// Whether commands reach the device no more (see [`Self::enter_device_lost`]).
    pub fn is_device_lost(&self) -> bool {
        self.device_lost
    }

    /// Refuses every command from now on, as after a timeout: the device may still use
    /// what it was given, so a teardown keeps (leaks) it.
    pub fn wedge(&mut self) {
        self.wedged = true;
        self.waiting = None;
    }

    /// Completes commands by command EQEs from now on (`mlx4_cmd_use_events`); the
    /// driver must have an EQ with the command event mapped to it.
    pub fn use_events(&mut self) {
        self.use_events = true;
    }

    /// Back to polling (`mlx4_cmd_use_polling`); an outstanding event-driven command is
    /// forgotten, and its EQE, should it come, is stale.
    pub fn use_polling(&mut self) {
        self.use_events = false;
        self.waiting = None;
    }

    /// Whether commands complete by events.
    pub fn uses_events(&self) -> bool {
        self.use_events
    }

    /// Command EQEs refused so far for a token that was not the waiting command's.
    pub fn stale_completions(&self) -> u32 {
        self.stale
    }

    /// Posts a command to complete by event (`mlx4_cmd_wait`'s post): the command
    /// carries a fresh token and the `e` bit. Returns the token; the completion comes to
    /// [`CommandInterface::complete_event`].
    pub fn post_event(
        &mut self,
        edge: &mut impl CommandEdge,
        cmd: &Command,
    ) -> Result<u16, CmdError> {
        if !self.use_events || self.waiting.is_some() {
            return Err(CmdError::NotInEventMode { opcode: cmd.opcode });
        }
        let token = self.next_token;
        self.post(edge, cmd, token, true)?;
        // Each command's token differs from the last one's, so a late EQE of a command
        // given up on cannot complete the next (upstream adds `token_mask + 1`).
        self.next_token = token.wrapping_add(1) & TOKEN_MASK;
        self.waiting = Some((cmd.opcode, token));
        Ok(token)
    }

    /// The opcode and token of the event-driven command waiting for its EQE.
    pub fn waiting(&self) -> Option<(u16, u16)> {
        self.waiting
    }

    /// A command EQE arrived (`mlx4_cmd_event`): if `token` is the waiting command's,
    /// the command is complete, and its status goes through [`status_result`]; the
    /// result is the opcode and the command's outcome (its immediate output). Any other
    /// token is refused as [`CmdError::StaleToken`], and the waiting command waits on.
    pub fn complete_event(
        &mut self,
        token: u16,
        status: u8,
        out_param: u64,
    ) -> Result<(u16, Result<u64, CmdError>), CmdError> {
        match self.waiting {
            Some((opcode, expected)) if expected == token => {
                self.waiting = None;
                Ok((opcode, status_result(opcode, status).map(|()| out_param)))
            }
            _ => {
                self.stale = self.stale.saturating_add(1);
                Err(CmdError::StaleToken { token })
            }
        }
    }

    /// Gives up on the waiting event-driven command after its timeout: as for a polled
    /// timeout, the device may still run it, so the interface is wedged.
    pub fn abandon_event(&mut self) -> CmdError {
        let opcode = self.waiting.take().map_or(0, |(opcode, _)| opcode);
        self.wedged = true;
        CmdError::Timeout { opcode }
    }

    /// Gives up on the waiting event-driven command, or refuses `opcode` before its
    /// post, because the device is in its catastrophic error state: no command is
    /// posted until the reset ([`Self::enter_device_lost`]).
    pub fn abandon_after_error(&mut self, opcode: u16) -> CmdError {
        let opcode = self.waiting.take().map_or(opcode, |(waiting, _)| waiting);
        self.wedged = true;
        CmdError::InternalError { opcode }
    }

    /// Whether a timeout has made the interface unusable (see [`CmdError::Wedged`]).
    pub fn is_wedged(&self) -> bool {
        self.wedged
    }

    fn read_hcr(edge: &mut impl CommandEdge, word: usize) -> u32 {
        edge.bar0_read_be32(HCR_BASE + word as u64)
    }

    fn write_hcr(edge: &mut impl CommandEdge, word: usize, value: u32) {
        edge.bar0_write_be32(HCR_BASE + word as u64, value);
    }

    /// `cmd_pending`: the device still owns the HCR while `go` is set, or while `t`
    /// still shows the value of the post before last.
    fn pending(&self, edge: &mut impl CommandEdge) -> bool {
        let status = Self::read_hcr(edge, hcr::STATUS);
        status & hcr::GO_BIT != 0 || (status & hcr::TOGGLE_BIT != 0) == self.toggle
    }

    /// Polls `pending` until it clears or `timeout_us` passes; true when it cleared.
    fn wait_idle(&self, edge: &mut impl CommandEdge, timeout_us: u64) -> bool {
        let start = edge.now_us();
        loop {
            if !self.pending(edge) {
                return true;
            }
            if edge.now_us().saturating_sub(start) >= timeout_us {
                // One last look, as `mlx4_cmd_poll` does after its loop.
                return !self.pending(edge);
            }
            edge.relax();
        }
    }

    /// Posts a command (`mlx4_cmd_post`): waits for the HCR to be free, writes the six
    /// parameter words, then, after a write barrier, the word with `go`, `t`, `e`, the op
    /// modifier and the opcode, which hands the command to the device.
    pub fn post(
        &mut self,
        edge: &mut impl CommandEdge,
        cmd: &Command,
        token: u16,
        event: bool,
    ) -> Result<(), CmdError> {
        let opcode = cmd.opcode;
        if self.wedged {
            return Err(CmdError::Wedged { opcode });
        }
        if !self.wait_idle(edge, GO_BIT_TIMEOUT_US) {
            return Err(CmdError::Busy { opcode });
        }
        Self::write_hcr(edge, hcr::IN_PARAM, (cmd.in_param >> 32) as u32);
        Self::write_hcr(edge, hcr::IN_PARAM + 4, cmd.in_param as u32);
        Self::write_hcr(edge, hcr::IN_MODIFIER, cmd.in_modifier);
        Self::write_hcr(edge, hcr::OUT_PARAM, (cmd.out_param >> 32) as u32);
        Self::write_hcr(edge, hcr::OUT_PARAM + 4, cmd.out_param as u32);
        Self::write_hcr(edge, hcr::TOKEN, u32::from(token) << 16);
        // The status word must reach the device last: it starts the command.
        edge.write_barrier();
        let mut word = hcr::GO_BIT
            | (u32::from(cmd.op_modifier & 0xf) << hcr::OPMOD_SHIFT)
            | u32::from(cmd.opcode & 0xfff);
        if self.toggle {
            word |= hcr::TOGGLE_BIT;
        }
        if event {
            word |= hcr::EVENT_BIT;
        }
        Self::write_hcr(edge, hcr::STATUS, word);
        self.toggle = !self.toggle;
        Ok(())
    }

    /// Waits for a posted command to complete (`mlx4_cmd_poll` after its post) and
    /// reads what it left: `out_param` and the status byte.
    pub fn poll(
        &mut self,
        edge: &mut impl CommandEdge,
        opcode: u16,
        timeout_us: u64,
    ) -> Result<Completion, CmdError> {
        if !self.wait_idle(edge, timeout_us) {
            // The device may still execute the command, and DMA to its mailboxes: the
            // driver must not post again nor reuse what the command points at.
            self.wedged = true;
            return Err(CmdError::Timeout { opcode });
        }
        let out_high = Self::read_hcr(edge, hcr::OUT_PARAM);
        let out_low = Self::read_hcr(edge, hcr::OUT_PARAM + 4);
        let status = Self::read_hcr(edge, hcr::STATUS) >> hcr::STATUS_SHIFT;
        Ok(Completion {
            status: status as u8,
            out_param: (u64::from(out_high) << 32) | u64::from(out_low),
        })
    }

    /// Runs a command to completion by polling (`mlx4_cmd`, `mlx4_cmd_box`).
    pub fn exec(&mut self, edge: &mut impl CommandEdge, cmd: &Command) -> Result<(), CmdError> {
        self.exec_imm(edge, cmd).map(|_| ())
    }

    /// Runs a command whose result is an immediate, and returns it (`mlx4_cmd_imm`).
    pub fn exec_imm(
        &mut self,
        edge: &mut impl CommandEdge,
        cmd: &Command,
    ) -> Result<u64, CmdError> {
        if self.device_lost {
            return Ok(0);
        }
        self.post(edge, cmd, POLL_TOKEN, false)?;
        let completion = self.poll(edge, cmd.opcode, cmd.timeout_us)?;
        status_result(cmd.opcode, completion.status)?;
        Ok(completion.out_param)
    }
}
