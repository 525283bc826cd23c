/**
 * ============================================================================================
 *   EMULATED ROOT — NOT AN AMD KEY.
 *   EMULATED ROOT — NOT AN AMD KEY.
 * ============================================================================================
 *
 * The two fixed RSA key pairs at the top of the emulated PSP certificate chain
 * (ARK → ASK → CEK → PEK → PDH, FORMATS.md §2). They were generated once for this project with
 * Node's `crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 65537 })` and
 * committed here so that a guest owner can *pin* the emulated ARK, exactly as a real owner pins
 * AMD's ARK for a product line. They are fixed (not regenerated per run) for that reason only.
 *
 * - RSA-2048, not the 4096 bits of AMD's real ARK/ASK: chosen for speed; the AMD CA format
 *   (virtee/sev `ca/cert/v1.rs`) allows both (2048 → RSA-PSS/SHA-256, 4096 → SHA-384).
 * - The private keys are PUBLIC (they are in this repository). Anything signed by them proves
 *   nothing outside this emulator. Never trust this ARK in a real deployment, and never mistake a
 *   certificate chained to it for AMD's.
 */

/** EMULATED ROOT — NOT AN AMD KEY. AMD Root Key (ARK) stand-in, RSA-2048, PKCS#8 PEM. */
export const EMULATED_ARK_PRIVATE_PEM = `-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCxalDpSx0SmbPK
T0mmohYrPyJnwcfXE+6UgQqlPbjo6xn0LHWKgVrxU1mDGfaJMuCLjtJYJrvF1UTl
4TADqLx1WrJGtVNqrk/f/tjsAd9SxnWbn74yXnju1J+UbSS2IUXL5yb36IMssrn+
c8n///CvFIsp2yvXWKmL1iuAygGA2aob5U8DNHGilhP5irN3JycHdfjKfbBeXhCf
Ct7zbd3fyB6KGCZv1weW9QWzzyr6EaH439MI+e3ZpP/TCF7RBhgapjciAgDxjAW0
Dx8PoR2S72UU+vMlMNpQSXwtS/TEM6sG3q39Xd60D0VCqQm1mOUUdSWJyxtQKgoO
i6RyQUaZAgMBAAECggEAA7FkV27Tqe2eyJvHkIXi3enrA+uMhtq928PR3mhUqdiB
n6EF81Oc+n/90X+gBPFqViKrbd/53EouVyCjA2Mm78RrCJNsAJZPSFOBiBbD43EJ
GquuZasCFmqWRccofU1fqrkNiRnYZ9JH59bY12YoSDoDvuPL26gso0yvzCGoUAUZ
owpxRbI5rF3+1vzdabiPVxYoHJcJa3fVGR3tN/ooGZU7YbJiVZqUxsnYJ/t/+/tO
HShvr/24SuFaEM13QEqrqe7mMMG97Dfnp7nyvW5K0ug6RNl4N7kBWTDcwQH9j4+C
qWgxTPF6ldIwThaVAnNjs5S7/jSmAxY+6gAicMowgQKBgQDlAKHyc6aGx0V3QwUa
OcWxNXAGJZ5RsCK+nE8DgcLATuCAOb8i4vgNSs/CdrX8i+ISdktIe11d1B2fhxzJ
flcGrv6N05L/BMG5Jx6LUZ/0MXNjbkBgk36phQlCUkM29WM0MjGFFMG9PmFDr2RQ
7b0TQeRu53HG601dxuAsE0I++QKBgQDGVMQhtAYDZD52zwkix1jxBfF0pXhfrjc1
7wZbolO+wKoikLJVl2VVblbww18PUEMfM8jlbPne0fUq6NRlq+ZXpglowNNHPdxO
jxQVIB0TQxLiNCYO26erFJYnTTX8ag8B1wyr1rrOzTQA1dCytPSH69FRNwsQ0shX
yV2CJMQMoQKBgQCOqqc6AfzkCK9pTnKWVRmpfg4tdjA82gu7TmwXVjb7UeihWdiP
JnG87jejAgv8qzULpXDfViPjuas+4JD5ouEaw9jIiOASSmdaL1njF9Yb7tbhQiWP
RTRq7fvHurIvQg8szHx3WWgduwgjf9hyZrodjjZ/NWd3ss4/NxAfxVvHGQKBgQC8
EOs+zleZZbg5rw8JtKCpRKp2ouXnTOs7sGGGCQKCcm2igzUoJnzHqu60NX7xpXlQ
oClTLKgwW0WxH8Ewe/XbjS2E8Lwn5QgAUnqHocEQX90LNMoV8sImX0oXEIctyGBc
rVBtrhvMOBek5xuUKjVqofoFmj1bAZVKcT7DRxvEoQKBgDVD9eYlrkPZOiA8xloQ
M9QfW4tRsF6vBZBxOnkWnLhw4p6gcoSkyIEDzePvzsUEg8uMPYo1rttwtfszYc8z
62P1xFY7bNDuFUVe6VljNz6DWd7MG0n4YHPfP9oDbcKtgCTAOseaV4G289SxMwtg
LBbK6Cm7eOZZjGFiykRe5fMQ
-----END PRIVATE KEY-----
`;

/** EMULATED ROOT — NOT AN AMD KEY. AMD SEV Key (ASK) stand-in, RSA-2048, PKCS#8 PEM. */
export const EMULATED_ASK_PRIVATE_PEM = `-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCuJs4xBDsekWuG
p9tnrIHblsYs1/J0f3IainX8lw3A8SIxhmnR3Jt+NYkL+FQRamA73pAPD2PKgR/P
irT4sozDWsKZuL+0skiETswbzxQWgfrGLs8Yb7JyrAPZoedflyQcxQ3BaPXuKaHv
UBWVnEmUTmneT8of6tiIVjCuZTF5l4yrms4ahiLW8obDVXO+VokvRrNHPiMc3o4L
GpWQOEbVativR0hsxEtrK3mbG3+98RTVZD/DvNzmBSv+QvOB6swXbhKXji3ERE/i
G+lQLSW0DWHT2TGXHBQcT+6mkRnEZiGUJMrR7ey0nX8JE++bsEGMDfXwtzD32K1l
CGbSr4CvAgMBAAECggEAIdFyT+1w5444sbTt89N5giFkyXeD4yCOkV3a7JqOtq18
xN5DtVegMGGIA/WMqbcdCfM9yVblO4FYoo5edz8A+7yntn88ZwQJ9ftxQmMzlO1X
u92CJM4n+oGx27THf/YTMq0Hb0wJGd8mzZihIGTxmuWhRGT9LLaHpu4J1QvckC5N
pMytd5V28P8r/6/0R6rNc+QdtDPETV5KupQrJzqyjTDvY5g2ifBsjM5P+Noisy/U
AXZdOYEqX+lubqtGXALogJ55mbfzgPX9lrnLJZXW39zK8LfyBLtmd/1l9gDbT+BK
zlaclIO6hlJd59G/DiVqoAj9djS4iBcvJ0akLBMjIQKBgQDvEbROathjCmgrwBVJ
8xI9c2D/kv1dXHqDJTFEV4rf6ZCM11cdmZtJBu0xmbb87kUFza2ARuRqBwCgH9LL
dc0BN4sBZA96A5b+f2LzH34k6EgTeB6VvcuuaRRsMEn0N0xzfF/+P4sizdfVVl/N
Uuxhp6IOOUJ/WQK5pN7DE5kKDwKBgQC6fCc0eqpo1yYrmnCSZvqw1zZ2vNfKH7nx
ore1L/2OgseWVKRmSIE3T5POi3F0SpjvX16rIigt0CVwN9ZaSkSVv7uYnWbr0PsS
yrjX8u3lIhKsno4RexWn7C6gan5wGDT+RUgf9UcPBG9DIBa2ZZntpGbOUR1RPaSx
xcdtPTc/YQKBgAZEWourtVxzS2PKN0SnAJVnzuUkP0wRPoztjqsR+GwCPW3Tv07h
VfbGHbWtJ+TdgiWyzJeORDKbWGLaMrZush8UC6rPqrAyI+UsBbYF31KsXCdWgMbA
IPTDgGuNoIKsaG6mlgWeONGCv+OxzfUd9WBh+peQ3LNl6/Jd5hELFHn1AoGBAJF8
tLVrkbETURMpfPOq5Z+7dyExeQSWteF/OeVgWGerPfzZchzeKfk12zGDdnLsk94E
QH4wurnrLpoa5d8xG8rcd4W8HwSQ2KAzifvn6ZMefwUu+dVHeoC0cTfzfUsEh6tr
77YHDHX51re+vBl2sJ1G6nHBtKah+fA7RbfCz2xhAoGAWmVJVO7qlQCE3KAmh5Wi
iuQ3TrRdOe+H7WvNZpmzOTFpsBFz27EQ5GCJkO3UbmvmbTCmrVeDu85OqBaKC/TP
IXE4L9SY6yMLUjqSZhTHZ3QaZJlsYYauZl3LwMltjYM/oVZiy5fW+HdxjfTNXWxS
Ad8Dsyqo7bCAnGfo7aAmu0I=
-----END PRIVATE KEY-----
`;

export { EMULATED_ARK_KEY_ID, EMULATED_ASK_KEY_ID, EMULATED_ARK_CERT_B64, EMULATED_ASK_CERT_B64 } from '../../protocol/sev/emulated-roots.js';
