/**
 * The firmware's own guest-private memory map, inside the firmware-private region that the image
 * publishes (protocol/firmware-image.ts: FW_PRIVATE_BASE .. WORKLOAD_RAM_START). Guest-internal:
 * nothing outside guest/ reads these addresses, but they migrate with the guest like any page.
 *
 * | GPA        | size      | what                                                              |
 * |------------|-----------|-------------------------------------------------------------------|
 * | 0x00812000 | 0x1000    | state page (below)                                                |
 * | 0x00813000 | 0x1000    | kept secrets: a re-encoded efi_secret table of the entries kept   |
 * | 0x00814000 | 0xC000    | reserved for the Migration Handler (keys, stack), never workload  |
 * | 0x00820000 | 0x7E0000  | `pattern` version table: u32 per working-set page                 |
 *
 * State page:
 *
 * | off   | size  | field                                                            |
 * |-------|-------|------------------------------------------------------------------|
 * | 0x000 | 8     | magic "SVMGFWST" once the BSP has booted                         |
 * | 0x008 | 4     | u32 AP release flag (1 = released)                               |
 * | 0x00C | 4     | u32 boot status: 0 booting, 1 running, 2 refused                 |
 * | 0x010 | 4     | u32 verified cmdline length                                      |
 * | 0x014 | 4     | u32 kept-secrets table length                                    |
 * | 0x100 | 0xF00 | verified cmdline bytes (UTF-8, no NUL)                           |
 */
import { gpa, type Gpa } from '../../platform/address.js';
import { FW_MH_KEYS_BASE, FW_MH_KEYS_SIZE, FW_PRIVATE_BASE, WORKLOAD_RAM_START } from '../../protocol/firmware-image.js';

export const STATE_PAGE: Gpa = gpa(FW_PRIVATE_BASE);
export const STATE_MAGIC = 'SVMGFWST';
export const STATE_OFF = { MAGIC: 0x000, RELEASE: 0x008, STATUS: 0x00c, CMDLINE_LEN: 0x010, KEPT_LEN: 0x014, CMDLINE: 0x100 } as const;
export const CMDLINE_MAX = 0xf00;
export const BootStatus = { BOOTING: 0, RUNNING: 1, REFUSED: 2 } as const;

export const KEPT_SECRETS: Gpa = gpa(FW_PRIVATE_BASE + 0x1000);
export const KEPT_SECRETS_MAX = 0x1000;
export const MH_RESERVED: Gpa = gpa(FW_MH_KEYS_BASE);
export const MH_RESERVED_SIZE = FW_MH_KEYS_SIZE;

export const VERSION_TABLE: Gpa = gpa(0x00820000);
export const VERSION_TABLE_MAX_PAGES = (WORKLOAD_RAM_START - 0x00820000) / 4;

/**
 * VMSA offsets of the general-purpose registers the firmware keeps its loop state in
 * (FORMATS.md §5.4; APM vol. 2 save area). rdx (0x310) holds the CPUID signature at reset and is
 * left alone.
 */
export const Reg = {
  rax: 0x1f8,
  rcx: 0x308,
  rbx: 0x318,
  rbp: 0x328,
  rsi: 0x330,
  rdi: 0x338,
  r8: 0x340,
  r9: 0x348,
  r10: 0x350,
  r11: 0x358,
  r12: 0x360,
  r13: 0x368,
  r14: 0x370,
  r15: 0x378,
} as const;
