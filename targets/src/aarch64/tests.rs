//! Every encoding against GNU as: each case's text is assembled by
//! `aarch64-linux-gnu-as`, disassembled by `aarch64-linux-gnu-objdump -d`,
//! and its words compared with what [`Asm`] emits. Skipped (with a note)
//! when binutils-aarch64-linux-gnu is not installed.

use std::process::Command;

use super::*;

type Case = (&'static str, fn(&mut Asm));

fn cases() -> Vec<Case> {
    vec![
        ("movz x3, #0x1234, lsl #16", |a| a.movz(X(3), 0x1234, 1)),
        ("movk x17, #0xffff, lsl #48", |a| a.movk(X(17), 0xffff, 3)),
        ("mov x9, x24", |a| a.mov(X(9), X(24))),
        ("add x1, x2, #4095", |a| a.add_imm(X(1), X(2), 4095)),
        ("add sp, sp, #16", |a| a.add_imm(SP, SP, 16)),
        ("sub x5, x6, #7", |a| a.sub_imm(X(5), X(6), 7)),
        ("subs x9, x9, #1", |a| a.subs_imm(X(9), X(9), 1)),
        ("add x0, x1, x2, lsl #2", |a| a.add(X(0), X(1), X(2), 2)),
        ("add x28, x27, x26", |a| a.add(X(28), X(27), X(26), 0)),
        ("sub x3, x4, x5", |a| a.sub(X(3), X(4), X(5))),
        ("cmp x10, x11", |a| a.cmp(X(10), X(11))),
        ("csel x1, x2, x3, lt", |a| {
            a.csel(X(1), X(2), X(3), Cond::Lt)
        }),
        ("ubfx x12, x5, #34, #30", |a| a.ubfx(X(12), X(5), 34, 30)),
        ("ubfx x4, x5, #0, #32", |a| a.ubfx(X(4), X(5), 0, 32)),
        ("ret", |a| a.ret()),
        ("stp x19, x20, [sp, #-48]!", |a| a.stp_pre(X(19), X(20), 48)),
        ("ldp x19, x20, [sp], #48", |a| a.ldp_post(X(19), X(20), 48)),
        // SVE
        ("ptrue p0.s", |a| a.ptrue(P(0), Pattern::All)),
        ("ptrue p3.s, vl1", |a| a.ptrue(P(3), Pattern::Vl1)),
        ("ptrue p0.b", |a| a.ptrue_b(P(0), Pattern::All)),
        ("whilelt p1.s, x10, x11", |a| a.whilelt(P(1), X(10), X(11))),
        ("cntw x7", |a| a.cntw(X(7))),
        ("incw x10", |a| a.incw(X(10), 1)),
        ("incw x10, all, mul #2", |a| a.incw(X(10), 2)),
        ("ld1w {z24.s}, p1/z, [x7]", |a| a.ld1w(Z(24), P(1), X(7), 0)),
        ("ld1w {z25.s}, p2/z, [x7, #1, mul vl]", |a| {
            a.ld1w(Z(25), P(2), X(7), 1)
        }),
        ("ld1w {z3.s}, p7/z, [x1, #-8, mul vl]", |a| {
            a.ld1w(Z(3), P(7), X(1), -8)
        }),
        ("ld1w {z26.s}, p1/z, [x7, x13, lsl #2]", |a| {
            a.ld1w_x(Z(26), P(1), X(7), X(13))
        }),
        ("st1w {z8.s}, p1, [x2]", |a| a.st1w(Z(8), P(1), X(2), 0)),
        ("st1w {z9.s}, p2, [x2, #1, mul vl]", |a| {
            a.st1w(Z(9), P(2), X(2), 1)
        }),
        ("st1w {z31.s}, p0, [x20, x21, lsl #2]", |a| {
            a.st1w_x(Z(31), P(0), X(20), X(21))
        }),
        ("ld1rw {z16.s}, p0/z, [x3]", |a| {
            a.ld1rw(Z(16), P(0), X(3), 0)
        }),
        ("ld1rw {z17.s}, p0/z, [x3, #252]", |a| {
            a.ld1rw(Z(17), P(0), X(3), 252)
        }),
        ("ld1rqw {z0.s}, p0/z, [x6]", |a| {
            a.ld1rqw(Z(0), P(0), X(6), 0)
        }),
        ("ld1rqw {z1.s}, p3/z, [x6, #-128]", |a| {
            a.ld1rqw(Z(1), P(3), X(6), -128)
        }),
        ("ld1rqw {z7.s}, p0/z, [x6, x19, lsl #2]", |a| {
            a.ld1rqw_x(Z(7), P(0), X(6), X(19))
        }),
        ("fmla z8.s, p0/m, z24.s, z16.s", |a| {
            a.fmla(Z(8), P(0), Z(24), Z(16))
        }),
        ("fmla z23.s, z31.s, z7.s[3]", |a| {
            a.fmla_idx(Z(23), Z(31), Z(7), 3)
        }),
        ("fmla z8.s, z24.s, z0.s[1]", |a| {
            a.fmla_idx(Z(8), Z(24), Z(0), 1)
        }),
        ("fadd z8.s, z8.s, z16.s", |a| a.fadd(Z(8), Z(8), Z(16))),
        ("fmul z9.s, z10.s, z29.s", |a| a.fmul(Z(9), Z(10), Z(29))),
        ("fmax z8.s, p0/m, z8.s, z30.s", |a| {
            a.fmax(Z(8), P(0), Z(30))
        }),
        ("fmin z12.s, p5/m, z12.s, z31.s", |a| {
            a.fmin(Z(12), P(5), Z(31))
        }),
        ("mov z30.s, w9", |a| a.dup_w(Z(30), X(9))),
        ("mov z11.s, #0", |a| a.dup_imm(Z(11), 0)),
        ("mov z11.s, #-3", |a| a.dup_imm(Z(11), -3)),
        ("bfmmla z4.s, z18.h, z27.h", |a| {
            a.bfmmla(Z(4), Z(18), Z(27))
        }),
        ("bfcvt z2.h, p1/m, z29.s", |a| a.bfcvt(Z(2), P(1), Z(29))),
        ("bfcvtnt z0.h, p0/m, z1.s", |a| a.bfcvtnt(Z(0), P(0), Z(1))),
        ("zip1 z8.d, z0.d, z1.d", |a| {
            a.permute_d(Permute::Zip1, Z(8), Z(0), Z(1))
        }),
        ("zip2 z9.d, z0.d, z31.d", |a| {
            a.permute_d(Permute::Zip2, Z(9), Z(0), Z(31))
        }),
        ("uzp1 z0.d, z8.d, z9.d", |a| {
            a.permute_d(Permute::Uzp1, Z(0), Z(8), Z(9))
        }),
        ("uzp2 z1.d, z22.d, z23.d", |a| {
            a.permute_d(Permute::Uzp2, Z(1), Z(22), Z(23))
        }),
        ("trn1 z4.d, z0.d, z2.d", |a| {
            a.permute_d(Permute::Trn1, Z(4), Z(0), Z(2))
        }),
        ("trn2 z5.d, z0.d, z2.d", |a| {
            a.permute_d(Permute::Trn2, Z(5), Z(0), Z(2))
        }),
        ("ld1h {z24.h}, p5/z, [x11, #1, mul vl]", |a| {
            a.ld1h(Z(24), P(5), X(11), 1)
        }),
        ("ld1h {z31.h}, p0/z, [x1, #-8, mul vl]", |a| {
            a.ld1h(Z(31), P(0), X(1), -8)
        }),
        ("whilelt p5.h, x10, x11", |a| {
            a.whilelt_h(P(5), X(10), X(11))
        }),
        // NEON
        ("ldr q24, [x7, #48]", |a| a.ldr_q(V(24), X(7), 48)),
        ("ldr q0, [x6, x13]", |a| a.ldr_q_x(V(0), X(6), X(13))),
        ("str q9, [x2, #65520]", |a| a.str_q(V(9), X(2), 65520)),
        ("ldp q24, q25, [x7, #-64]", |a| {
            a.ldp_q(V(24), V(25), X(7), -64)
        }),
        ("ldr s3, [x4, #16380]", |a| a.ldr_s(V(3), X(4), 16380)),
        ("str s31, [x1, #4]", |a| a.str_s(V(31), X(1), 4)),
        ("ldr s5, [x10, x14]", |a| a.ldr_s_x(V(5), X(10), X(14))),
        ("str s0, [x12, x20]", |a| a.str_s_x(V(0), X(12), X(20))),
        ("cmp x6, #16", |a| a.subs_imm(XZR, X(6), 16)),
        ("mov x12, sp", |a| a.add_imm(X(12), SP, 0)),
        ("sub sp, sp, #1152", |a| a.sub_imm(SP, SP, 1152)),
        ("ld1r {v30.4s}, [x3]", |a| a.ld1r_4s(V(30), X(3))),
        ("fmla v8.4s, v24.4s, v31.s[2]", |a| {
            a.fmla_4s_idx(V(8), V(24), V(31), 2)
        }),
        ("fmla v8.4s, v24.4s, v0.s[1]", |a| {
            a.fmla_4s_idx(V(8), V(24), V(0), 1)
        }),
        ("fmla v1.4s, v2.4s, v3.4s", |a| a.fmla_4s(V(1), V(2), V(3))),
        ("fadd v1.4s, v2.4s, v3.4s", |a| a.fadd_4s(V(1), V(2), V(3))),
        ("fmul v1.4s, v2.4s, v30.4s", |a| {
            a.fmul_4s(V(1), V(2), V(30))
        }),
        ("fmax v1.4s, v31.4s, v1.4s", |a| {
            a.fmax_4s(V(1), V(31), V(1))
        }),
        ("fmin v1.4s, v31.4s, v1.4s", |a| {
            a.fmin_4s(V(1), V(31), V(1))
        }),
        ("dup v29.4s, w9", |a| a.dup_4s(V(29), X(9))),
        ("movi v17.2d, #0", |a| a.zero_q(V(17))),
    ]
}

/// Assembles `text` with GNU as and returns the words objdump shows, or
/// `None` when the tools are missing.
fn gnu_words(text: &str, tag: &str) -> Option<Vec<u32>> {
    let dir = std::env::temp_dir().join(format!("cpucc-a64-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, obj) = (dir.join("t.s"), dir.join("t.o"));
    std::fs::write(&src, text).unwrap();
    let Ok(st) = Command::new("aarch64-linux-gnu-as")
        .args(["-march=armv8.6-a+sve+bf16+i8mm", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
    else {
        eprintln!(
            "skipped: needs aarch64-linux-gnu-as (apt-get install binutils-aarch64-linux-gnu)"
        );
        return None;
    };
    assert!(st.success(), "GNU as rejected the test text");
    let out = Command::new("aarch64-linux-gnu-objdump")
        .arg("-d")
        .arg(&obj)
        .output()
        .expect("aarch64-linux-gnu-objdump");
    let _ = std::fs::remove_dir_all(&dir);
    // "   4:\td2a24683 \tmov\tx3, #..." -> the word column.
    let words = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.split_once(":\t")?;
            u64::from_str_radix(addr.trim(), 16).ok()?;
            u32::from_str_radix(rest.split_whitespace().next()?, 16).ok()
        })
        .collect();
    Some(words)
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn encodings_match_gnu_as() {
    let cases = cases();
    let text: String = cases.iter().map(|(t, _)| format!("{t}\n")).collect();
    let Some(want) = gnu_words(&text, "enc") else {
        return;
    };
    assert_eq!(want.len(), cases.len());
    let mut bad = Vec::new();
    for ((t, f), w) in cases.iter().zip(&want) {
        let mut a = Asm::new();
        f(&mut a);
        let got = words(&a.finish().unwrap());
        if got != [*w] {
            bad.push(format!("{t}: ours {:08x?}, as {w:08x}", got));
        }
    }
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
}

#[test]
fn branches_and_constants_match_gnu_as() {
    let text = "
        movz x1, #0xbeef
        movk x1, #0x1234, lsl #32
    0:  cbz x2, 1f
        tbz x5, #33, 1f
        tbnz x5, #2, 0b
        subs x9, x9, #1
        b.ne 0b
        b.lt 1f
        cbnz x3, 0b
        b 0b
    1:  ret
    ";
    let Some(want) = gnu_words(text, "br") else {
        return;
    };
    let mut a = Asm::new();
    a.mov_imm(X(1), 0x1234_0000_beef);
    let (top, end) = (a.label(), a.label());
    a.bind(top);
    a.cbz(X(2), end);
    a.tbz(X(5), 33, end);
    a.tbnz(X(5), 2, top);
    a.subs_imm(X(9), X(9), 1);
    a.b_cond(Cond::Ne, top);
    a.b_cond(Cond::Lt, end);
    a.cbnz(X(3), top);
    a.b(top);
    a.bind(end);
    a.ret();
    assert_eq!(words(&a.finish().unwrap()), want);
}

#[test]
fn out_of_range_immediates_and_unbound_labels_are_errors() {
    let mut a = Asm::new();
    a.add_imm(X(0), X(0), 4096);
    assert!(a.finish().unwrap_err().contains("add immediate"));
    let mut a = Asm::new();
    a.fmla_idx(Z(8), Z(9), Z(8), 0);
    assert!(a.finish().unwrap_err().contains("fmla indexed register"));
    let mut a = Asm::new();
    a.ld1rqw(Z(0), P(0), X(0), 8);
    assert!(a.finish().unwrap_err().contains("multiple of 16"));
    let mut a = Asm::new();
    let l = a.label();
    a.b(l);
    assert!(a.finish().unwrap_err().contains("never bound"));
}
