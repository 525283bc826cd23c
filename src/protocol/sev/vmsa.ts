/**
 * The SEV-ES VMSA page (FORMATS.md §5.4; AMD APM vol. 2 save area, Linux `struct sev_es_save_area`,
 * sev-snp-measure `vmsa.py`, sevctl `vmsa build`): 4096 bytes per vCPU, measured by
 * LAUNCH_UPDATE_VMSA exactly as supplied.
 *
 * Segments (es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr) are VmcbSeg = selector u16 @0,
 * attrib u16 @2, limit u32 @4, base u64 @8. The reset state (QEMU userspace, KVM):
 *
 * | off   | field        | BSP                                   | AP                           |
 * |-------|--------------|---------------------------------------|------------------------------|
 * | 0x000 | es           | attrib 0x93, limit 0xffff             | same                         |
 * | 0x010 | cs           | sel 0xf000, attrib 0x9b, limit 0xffff, base 0xffff0000 | base = reset & 0xffff0000 |
 * | 0x020…0x050 | ss ds fs gs | attrib 0x93, limit 0xffff         | same                         |
 * | 0x060 | gdtr         | limit 0xffff                          | same                         |
 * | 0x070 | ldtr         | attrib 0x82, limit 0xffff             | same                         |
 * | 0x080 | idtr         | limit 0xffff                          | same                         |
 * | 0x090 | tr           | attrib 0x8b, limit 0xffff             | same                         |
 * | 0x0D0 | efer         | 0x1000 (SVME)                         | same                         |
 * | 0x148 | cr4          | 0x40                                  | same                         |
 * | 0x158 | cr0          | 0x10                                  | same                         |
 * | 0x160 | dr7          | 0x400                                 | same                         |
 * | 0x168 | dr6          | 0xffff0ff0                            | same                         |
 * | 0x170 | rflags       | 0x2                                   | same                         |
 * | 0x178 | rip          | 0xfff0                                | reset & 0xffff               |
 * | 0x268 | g_pat        | 0x0007040600070406                    | same                         |
 * | 0x310 | rdx          | CPUID(1).EAX signature                | same                         |
 * | 0x3B0 | sev_features | 0 (configurable)                      | same                         |
 * | 0x3E8 | xcr0         | 0x1                                   | same                         |
 * | 0x408 | mxcsr u32    | 0x1f80 on KVM ≥ 6.10, else 0          | same                         |
 * | 0x410 | x87_fcw u16  | 0x37f on KVM ≥ 6.10, else 0           | same                         |
 */
import { SevFormatError, expectLength } from './errors.js';

export const VMSA_SIZE = 4096;
export const VMCB_SEG_SIZE = 16;

export const VmsaOffset = {
  ES: 0x000,
  CS: 0x010,
  SS: 0x020,
  DS: 0x030,
  FS: 0x040,
  GS: 0x050,
  GDTR: 0x060,
  LDTR: 0x070,
  IDTR: 0x080,
  TR: 0x090,
  CPL: 0x0cb,
  EFER: 0x0d0,
  XSS: 0x140,
  CR4: 0x148,
  CR3: 0x150,
  CR0: 0x158,
  DR7: 0x160,
  DR6: 0x168,
  RFLAGS: 0x170,
  RIP: 0x178,
  RSP: 0x1d8,
  RAX: 0x1f8,
  G_PAT: 0x268,
  RCX: 0x308,
  RDX: 0x310,
  RBX: 0x318,
  RBP: 0x328,
  RSI: 0x330,
  RDI: 0x338,
  R8: 0x340,
  R9: 0x348,
  R10: 0x350,
  R11: 0x358,
  R12: 0x360,
  R13: 0x368,
  R14: 0x370,
  R15: 0x378,
  GUEST_EXIT_INFO_1: 0x390,
  SEV_FEATURES: 0x3b0,
  EVENT_INJ: 0x3e0,
  XCR0: 0x3e8,
  X87_DP: 0x400,
  MXCSR: 0x408,
  X87_FTW: 0x40c,
  X87_FSW: 0x40e,
  X87_FCW: 0x410,
  FPREG_X87: 0x420,
  XMM: 0x470,
  YMM: 0x570,
} as const;

/** Offsets inside a VmcbSeg. */
export const SegOffset = { SELECTOR: 0, ATTRIB: 2, LIMIT: 4, BASE: 8 } as const;

/** Mirrors QEMU/KVM: BSP starts at the architectural reset vector 0xfffffff0. */
const BSP_CS_BASE = 0xffff0000;
const BSP_RIP = 0xfff0;

/**
 * CPUID(1).EAX of a vCPU model (sev-snp-measure `vcpu_types.py`), e.g. EPYC-v4 (23, 1, 2) = 0x800f12,
 * EPYC-Milan (25, 1, 1) = 0xa00f11.
 */
export function cpuSignature(family: number, model: number, stepping: number): number {
  for (const [name, v, max] of [
    ['family', family, 0xff + 0xf],
    ['model', model, 0xff],
    ['stepping', stepping, 0xf],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > max) throw new SevFormatError('value', `CPU ${name} ${v} not in 0..${max}`);
  }
  const famLo = family > 0xf ? 0xf : family;
  const famHi = family > 0xf ? (family - 0xf) & 0xff : 0;
  return ((famHi << 20) | (((model >> 4) & 0xf) << 16) | (famLo << 8) | ((model & 0xf) << 4) | (stepping & 0xf)) >>> 0;
}

/** Known QEMU vCPU models → signature. */
export const VcpuSignature = {
  EPYC: 0x800f12,
  'EPYC-v4': 0x800f12,
  'EPYC-Rome': 0x830f10,
  'EPYC-Milan': 0xa00f11,
  'EPYC-Genoa': 0xa10f10,
  'EPYC-Turin': 0xb00f00,
} as const;

function setSeg(dv: DataView, off: number, sel: number, attrib: number, limit: number, base: number): void {
  dv.setUint16(off + SegOffset.SELECTOR, sel, true);
  dv.setUint16(off + SegOffset.ATTRIB, attrib, true);
  dv.setUint32(off + SegOffset.LIMIT, limit, true);
  dv.setBigUint64(off + SegOffset.BASE, BigInt(base), true);
}

function checkU(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new SevFormatError('value', `VMSA ${name} ${v} not in 0..0x${max.toString(16)}`);
}

/**
 * The initial VMSA of a vCPU as QEMU/KVM hands it to LAUNCH_UPDATE_VMSA. `resetAddr` is the OVMF
 * SEV-ES reset block value (used for APs only). mxcsr/fcw default to 0 (KVM < 6.10, sevctl's
 * vectors); pass 0x1f80/0x37f for newer hosts.
 */
export function buildResetVmsa(p: {
  bsp: boolean;
  resetAddr: number;
  cpuSignature: number;
  mxcsr?: number;
  fcw?: number;
  sevFeatures?: bigint;
}): Uint8Array {
  checkU('resetAddr', p.resetAddr, 0xffffffff);
  checkU('cpuSignature', p.cpuSignature, 0xffffffff);
  const mxcsr = p.mxcsr ?? 0;
  const fcw = p.fcw ?? 0;
  checkU('mxcsr', mxcsr, 0xffffffff);
  checkU('fcw', fcw, 0xffff);
  const sevFeatures = p.sevFeatures ?? 0n;
  if (sevFeatures < 0n || sevFeatures > 0xffffffffffffffffn) throw new SevFormatError('value', `VMSA sev_features ${sevFeatures} is not a u64`);

  const b = new Uint8Array(VMSA_SIZE);
  const dv = new DataView(b.buffer);
  const csBase = p.bsp ? BSP_CS_BASE : (p.resetAddr & 0xffff0000) >>> 0;
  const rip = p.bsp ? BSP_RIP : p.resetAddr & 0xffff;
  setSeg(dv, VmsaOffset.ES, 0, 0x93, 0xffff, 0);
  setSeg(dv, VmsaOffset.CS, 0xf000, 0x9b, 0xffff, csBase);
  for (const off of [VmsaOffset.SS, VmsaOffset.DS, VmsaOffset.FS, VmsaOffset.GS]) setSeg(dv, off, 0, 0x93, 0xffff, 0);
  setSeg(dv, VmsaOffset.GDTR, 0, 0, 0xffff, 0);
  setSeg(dv, VmsaOffset.LDTR, 0, 0x82, 0xffff, 0);
  setSeg(dv, VmsaOffset.IDTR, 0, 0, 0xffff, 0);
  setSeg(dv, VmsaOffset.TR, 0, 0x8b, 0xffff, 0);
  const u64 = (off: number, v: bigint | number): void => dv.setBigUint64(off, BigInt(v), true);
  u64(VmsaOffset.EFER, 0x1000);
  u64(VmsaOffset.CR4, 0x40);
  u64(VmsaOffset.CR0, 0x10);
  u64(VmsaOffset.DR7, 0x400);
  u64(VmsaOffset.DR6, 0xffff0ff0);
  u64(VmsaOffset.RFLAGS, 0x2);
  u64(VmsaOffset.RIP, rip);
  u64(VmsaOffset.G_PAT, 0x0007040600070406n);
  u64(VmsaOffset.RDX, p.cpuSignature);
  u64(VmsaOffset.SEV_FEATURES, sevFeatures);
  u64(VmsaOffset.XCR0, 0x1);
  dv.setUint32(VmsaOffset.MXCSR, mxcsr, true);
  dv.setUint16(VmsaOffset.X87_FCW, fcw, true);
  return b;
}

/** BSP + (vcpus − 1) APs, in vCPU index order (the order KVM measures them). */
export function buildResetVmsas(p: {
  vcpus: number;
  resetAddr: number;
  cpuSignature: number;
  mxcsr?: number;
  fcw?: number;
  sevFeatures?: bigint;
}): Uint8Array[] {
  checkU('vcpus', p.vcpus, 512);
  if (p.vcpus < 1) throw new SevFormatError('value', 'at least one vCPU');
  const { vcpus, ...rest } = p;
  const bsp = buildResetVmsa({ ...rest, bsp: true });
  const ap = buildResetVmsa({ ...rest, bsp: false });
  return [bsp, ...Array.from({ length: vcpus - 1 }, () => Uint8Array.from(ap))];
}

/** Reads a u64 register/field of a VMSA page (length-checked). */
export function vmsaU64(vmsa: Uint8Array, off: number): bigint {
  expectLength('VMSA', vmsa, VMSA_SIZE);
  if (!Number.isInteger(off) || off < 0 || off + 8 > VMSA_SIZE) throw new SevFormatError('value', `VMSA offset ${off}`);
  return new DataView(vmsa.buffer, vmsa.byteOffset, vmsa.byteLength).getBigUint64(off, true);
}
