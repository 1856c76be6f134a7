//! The cache-miss path: read a module's `.eh_frame` to find the [`Rule`]
//! for one code address.
//!
//! This follows what libgcc's `_Unwind_Backtrace` does for the same address
//! (the FDE found through `.eh_frame_hdr`'s sorted table, the CFA program run
//! up to the row that holds the address) and turns the row into a [`Rule`],
//! or into [`Rule::GIVE_UP`] where the row needs more than rsp, rbp and the
//! return address: CFA or register expressions, a CFA based on another
//! register, a saved rsp, a return address anywhere but `CFA - 8`, signal
//! frames. gimli parses; its `UnwindContext` lives on this function's stack
//! with fixed-size storage, so nothing is allocated.
use gimli::{
    BaseAddresses, CallFrameInstruction, CfaRule, EhFrame, EhFrameHdr, NativeEndian, Register,
    RegisterRule, UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow, X86_64,
};

use super::modules::Module;
use super::rules::Rule;

/// Fixed-size storage for gimli's unwind context: x86_64 code saves at most
/// the six callee-saved registers and the return address, and nests
/// `DW_CFA_remember_state` rarely. A program that needs more is an error,
/// hence [`Rule::GIVE_UP`].
struct OnStack;

impl<T: gimli::ReaderOffset> UnwindContextStorage<T> for OnStack {
    type Rules = [(Register, RegisterRule<T>); 20];
    type Stack = [UnwindTableRow<T, Self>; 4];
}

/// The rule for code address `addr` inside `module`.
///
/// `addr` is where libgcc would look: a return address minus one, or the
/// exact address of the capture's own first instruction.
#[inline(never)]
#[cold]
pub(super) fn rule_for(module: &Module, addr: usize) -> Rule {
    if module.hdr == 0 || module.hdr_len == 0 {
        return Rule::GIVE_UP;
    }
    // SAFETY: `hdr..hdr + hdr_len` is the loaded PT_GNU_EH_FRAME segment of
    // a module that holds code on this thread's stack, so it stays mapped
    // for the whole call; nobody writes to it.
    let hdr = unsafe { std::slice::from_raw_parts(module.hdr as *const u8, module.hdr_len) };
    rule_from_tables(module, hdr, addr).unwrap_or(Rule::GIVE_UP)
}

fn rule_from_tables(module: &Module, hdr: &[u8], addr: usize) -> Option<Rule> {
    let bases = BaseAddresses::default().set_eh_frame_hdr(module.hdr as u64);
    let parsed = EhFrameHdr::new(hdr, NativeEndian).parse(&bases, 8).ok()?;
    let eh_frame_at = parsed.eh_frame_ptr().direct().ok()? as usize;
    if eh_frame_at < module.seg_lo || eh_frame_at >= module.seg_hi {
        return None;
    }
    // SAFETY: `.eh_frame` starts inside the loaded segment that holds it
    // (checked above), which is mapped for as long as `module` is loaded,
    // and it cannot run past that segment's end.
    let eh_frame_bytes = unsafe {
        std::slice::from_raw_parts(eh_frame_at as *const u8, module.seg_hi - eh_frame_at)
    };
    let eh_frame = EhFrame::new(eh_frame_bytes, NativeEndian);
    let bases = bases.set_eh_frame(eh_frame_at as u64);
    let table = parsed.table()?;
    let fde = table
        .fde_for_address(&eh_frame, &bases, addr as u64, EhFrame::cie_from_offset)
        .ok()?;
    let cie = fde.cie();
    if cie.is_signal_trampoline() || cie.return_address_register() != X86_64::RA {
        return None;
    }
    let mut ctx = UnwindContext::<usize, OnStack>::new_in();
    let row = fde
        .unwind_info_for_address(&eh_frame, &bases, &mut ctx, addr as u64)
        .ok()?;

    let (cfa_in_rbp, cfa_offset) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            (false, offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            (true, offset)
        }
        _ => return None,
    };
    // The caller's rsp is the CFA unless the CFI says otherwise.
    if !matches!(
        row.register(X86_64::RSP),
        RegisterRule::Undefined | RegisterRule::SameValue
    ) {
        return None;
    }
    match row.register(X86_64::RA) {
        RegisterRule::Offset(-8) => {}
        // gimli drops undefined rules from its rows, so an absent return
        // address rule is only the end of the stack (`DW_CFA_undefined
        // rip`, as in `_start` and `clone`) if the CFI says so in words.
        RegisterRule::Undefined => {
            let says_undefined = |insn: Result<Option<CallFrameInstruction<usize>>, _>| {
                matches!(insn, Ok(Some(CallFrameInstruction::Undefined { register }))
                    if register == X86_64::RA)
            };
            let mut fde_insns = fde.instructions(&eh_frame, &bases);
            let mut cie_insns = cie.instructions(&eh_frame, &bases);
            // Bounded: each instruction is at least one byte of the entry.
            let explicit = std::iter::from_fn(|| match fde_insns.next() {
                Ok(None) | Err(_) => None,
                next => Some(next),
            })
            .chain(std::iter::from_fn(|| match cie_insns.next() {
                Ok(None) | Err(_) => None,
                next => Some(next),
            }))
            .any(says_undefined);
            return Some(if explicit { Rule::END } else { Rule::GIVE_UP });
        }
        _ => return None,
    }
    let rbp_at = match row.register(X86_64::RBP) {
        RegisterRule::Undefined | RegisterRule::SameValue => None,
        RegisterRule::Offset(at) => Some(at),
        _ => return None,
    };
    Some(Rule::new(cfa_in_rbp, cfa_offset, rbp_at))
}
