//! The IANA "Processor Architecture Types" registry (DHCPv4 option 93, RFC 4578;
//! DHCPv6 option 61, RFC 5970).
//!
//! Codes are kept losslessly: an unknown code becomes [`Arch::Unknown`] and converts back to the
//! same number. Note the RFC 4578 errata (EID 4099/4100): code 7 is **x64 UEFI** and code 9 is
//! **EBC** — the RFC's original table has them swapped, and some old servers still follow it.

use std::fmt;

/// One client system architecture, as sent in option 93 (v4) or 61 (v6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// 0: x86 BIOS (legacy PC, PXE ROM).
    X86Bios,
    /// 1: NEC/PC98 (deprecated).
    Pc98,
    /// 2: Itanium.
    Itanium,
    /// 3: DEC Alpha (deprecated).
    Alpha,
    /// 4: Arc x86 (deprecated).
    ArcX86,
    /// 5: Intel Lean Client (deprecated).
    IntelLean,
    /// 6: x86 UEFI (32-bit).
    X86Uefi,
    /// 7: x64 UEFI (errata: the RFC text says EBC).
    X64Uefi,
    /// 8: Xscale UEFI.
    XscaleUefi,
    /// 9: EBC (errata: the RFC text says x64 UEFI).
    Ebc,
    /// 10: ARM 32-bit UEFI.
    Arm32Uefi,
    /// 11: ARM 64-bit UEFI.
    Arm64Uefi,
    /// 12: PowerPC Open Firmware.
    PpcOpenFirmware,
    /// 13: PowerPC ePAPR.
    PpcEpapr,
    /// 14: POWER OPAL v3.
    PowerOpalV3,
    /// 15: x86 UEFI HTTP boot.
    X86UefiHttp,
    /// 16: x64 UEFI HTTP boot.
    X64UefiHttp,
    /// 17: EBC HTTP boot.
    EbcHttp,
    /// 18: ARM 32-bit UEFI HTTP boot.
    Arm32UefiHttp,
    /// 19: ARM 64-bit UEFI HTTP boot.
    Arm64UefiHttp,
    /// 20: x86 BIOS HTTP boot.
    X86BiosHttp,
    /// 21: ARM 32-bit U-Boot.
    Arm32Uboot,
    /// 22: ARM 64-bit U-Boot.
    Arm64Uboot,
    /// 23: ARM 32-bit U-Boot HTTP.
    Arm32UbootHttp,
    /// 24: ARM 64-bit U-Boot HTTP.
    Arm64UbootHttp,
    /// 25: RISC-V 32-bit UEFI.
    RiscV32Uefi,
    /// 26: RISC-V 32-bit UEFI HTTP.
    RiscV32UefiHttp,
    /// 27: RISC-V 64-bit UEFI.
    RiscV64Uefi,
    /// 28: RISC-V 64-bit UEFI HTTP.
    RiscV64UefiHttp,
    /// 29: RISC-V 128-bit UEFI.
    RiscV128Uefi,
    /// 30: RISC-V 128-bit UEFI HTTP.
    RiscV128UefiHttp,
    /// 31: s390 Basic.
    S390Basic,
    /// 32: s390 Extended.
    S390Extended,
    /// 33: MIPS 32-bit UEFI.
    Mips32Uefi,
    /// 34: MIPS 64-bit UEFI.
    Mips64Uefi,
    /// 35: Sunway 32-bit UEFI.
    Sunway32Uefi,
    /// 36: Sunway 64-bit UEFI.
    Sunway64Uefi,
    /// 37: LoongArch 32-bit UEFI.
    LoongArch32Uefi,
    /// 38: LoongArch 32-bit UEFI HTTP.
    LoongArch32UefiHttp,
    /// 39: LoongArch 64-bit UEFI.
    LoongArch64Uefi,
    /// 40: LoongArch 64-bit UEFI HTTP.
    LoongArch64UefiHttp,
    /// A code this build does not know (kept as is).
    Unknown(u16),
}

/// The firmware family an architecture code implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// Legacy PC BIOS (PXE option ROM).
    Bios,
    /// UEFI (PXE or HTTP boot).
    Uefi,
    /// Das U-Boot.
    Uboot,
    /// Open Firmware / OPAL / ePAPR (POWER).
    OpenFirmware,
    /// Anything else (s390, deprecated codes, unknown codes).
    Other,
}

impl Firmware {
    /// Slug used in scripts and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::Uboot => "uboot",
            Firmware::OpenFirmware => "openfirmware",
            Firmware::Other => "other",
        }
    }
}

/// (code, variant, slug, firmware, http boot)
const TABLE: &[(u16, Arch, &str, Firmware, bool)] = &[
    (0, Arch::X86Bios, "x86-bios", Firmware::Bios, false),
    (1, Arch::Pc98, "pc98", Firmware::Other, false),
    (2, Arch::Itanium, "itanium", Firmware::Other, false),
    (3, Arch::Alpha, "alpha", Firmware::Other, false),
    (4, Arch::ArcX86, "arc-x86", Firmware::Other, false),
    (5, Arch::IntelLean, "intel-lean-client", Firmware::Other, false),
    (6, Arch::X86Uefi, "x86-uefi", Firmware::Uefi, false),
    (7, Arch::X64Uefi, "x64-uefi", Firmware::Uefi, false),
    (8, Arch::XscaleUefi, "xscale-uefi", Firmware::Uefi, false),
    (9, Arch::Ebc, "ebc", Firmware::Uefi, false),
    (10, Arch::Arm32Uefi, "arm32-uefi", Firmware::Uefi, false),
    (11, Arch::Arm64Uefi, "arm64-uefi", Firmware::Uefi, false),
    (12, Arch::PpcOpenFirmware, "ppc-openfirmware", Firmware::OpenFirmware, false),
    (13, Arch::PpcEpapr, "ppc-epapr", Firmware::OpenFirmware, false),
    (14, Arch::PowerOpalV3, "power-opal-v3", Firmware::OpenFirmware, false),
    (15, Arch::X86UefiHttp, "x86-uefi-http", Firmware::Uefi, true),
    (16, Arch::X64UefiHttp, "x64-uefi-http", Firmware::Uefi, true),
    (17, Arch::EbcHttp, "ebc-http", Firmware::Uefi, true),
    (18, Arch::Arm32UefiHttp, "arm32-uefi-http", Firmware::Uefi, true),
    (19, Arch::Arm64UefiHttp, "arm64-uefi-http", Firmware::Uefi, true),
    (20, Arch::X86BiosHttp, "x86-bios-http", Firmware::Bios, true),
    (21, Arch::Arm32Uboot, "arm32-uboot", Firmware::Uboot, false),
    (22, Arch::Arm64Uboot, "arm64-uboot", Firmware::Uboot, false),
    (23, Arch::Arm32UbootHttp, "arm32-uboot-http", Firmware::Uboot, true),
    (24, Arch::Arm64UbootHttp, "arm64-uboot-http", Firmware::Uboot, true),
    (25, Arch::RiscV32Uefi, "riscv32-uefi", Firmware::Uefi, false),
    (26, Arch::RiscV32UefiHttp, "riscv32-uefi-http", Firmware::Uefi, true),
    (27, Arch::RiscV64Uefi, "riscv64-uefi", Firmware::Uefi, false),
    (28, Arch::RiscV64UefiHttp, "riscv64-uefi-http", Firmware::Uefi, true),
    (29, Arch::RiscV128Uefi, "riscv128-uefi", Firmware::Uefi, false),
    (30, Arch::RiscV128UefiHttp, "riscv128-uefi-http", Firmware::Uefi, true),
    (31, Arch::S390Basic, "s390-basic", Firmware::Other, false),
    (32, Arch::S390Extended, "s390-extended", Firmware::Other, false),
    (33, Arch::Mips32Uefi, "mips32-uefi", Firmware::Uefi, false),
    (34, Arch::Mips64Uefi, "mips64-uefi", Firmware::Uefi, false),
    (35, Arch::Sunway32Uefi, "sunway32-uefi", Firmware::Uefi, false),
    (36, Arch::Sunway64Uefi, "sunway64-uefi", Firmware::Uefi, false),
    (37, Arch::LoongArch32Uefi, "loongarch32-uefi", Firmware::Uefi, false),
    (38, Arch::LoongArch32UefiHttp, "loongarch32-uefi-http", Firmware::Uefi, true),
    (39, Arch::LoongArch64Uefi, "loongarch64-uefi", Firmware::Uefi, false),
    (40, Arch::LoongArch64UefiHttp, "loongarch64-uefi-http", Firmware::Uefi, true),
];

impl Arch {
    fn entry(self) -> Option<&'static (u16, Arch, &'static str, Firmware, bool)> {
        TABLE.iter().find(|e| e.1 == self)
    }

    /// The registry code.
    pub fn code(self) -> u16 {
        match self {
            Arch::Unknown(n) => n,
            a => a.entry().map(|e| e.0).unwrap_or(u16::MAX),
        }
    }

    /// The slug of a registered code, without allocating; `None` for unknown codes.
    pub fn static_name(self) -> Option<&'static str> {
        self.entry().map(|e| e.2)
    }

    /// Slug used in scripts and logs (`x64-uefi`, `x86-bios`, …); `unknown-N` for unknown codes.
    pub fn name(self) -> String {
        match self.entry() {
            Some(e) => e.2.to_string(),
            None => format!("unknown-{}", self.code()),
        }
    }

    /// The firmware family this code implies.
    pub fn firmware(self) -> Firmware {
        self.entry().map(|e| e.3).unwrap_or(Firmware::Other)
    }

    /// Whether this code is an HTTP boot client.
    pub fn is_http(self) -> bool {
        self.entry().map(|e| e.4).unwrap_or(false)
    }

    /// Parses a slug as printed by [`Arch::name`], or a decimal code.
    pub fn from_name(s: &str) -> Option<Arch> {
        if let Ok(n) = s.parse::<u16>() {
            return Some(Arch::from(n));
        }
        if let Some(rest) = s.strip_prefix("unknown-") {
            return rest.parse::<u16>().ok().map(Arch::from);
        }
        TABLE.iter().find(|e| e.2 == s).map(|e| e.1)
    }
}

impl From<u16> for Arch {
    fn from(n: u16) -> Arch {
        TABLE.iter().find(|e| e.0 == n).map(|e| e.1).unwrap_or(Arch::Unknown(n))
    }
}

impl From<Arch> for u16 {
    fn from(a: Arch) -> u16 {
        a.code()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for n in 0..=u16::MAX {
            assert_eq!(Arch::from(n).code(), n, "code {n}");
        }
    }

    #[test]
    fn errata_4578_seven_is_x64_uefi_nine_is_ebc() {
        assert_eq!(Arch::from(7), Arch::X64Uefi);
        assert_eq!(Arch::from(7).name(), "x64-uefi");
        assert_eq!(Arch::from(9), Arch::Ebc);
    }

    #[test]
    fn names_and_firmware() {
        assert_eq!(Arch::from(0).name(), "x86-bios");
        assert_eq!(Arch::from(0).firmware(), Firmware::Bios);
        assert_eq!(Arch::from(19).name(), "arm64-uefi-http");
        assert!(Arch::from(16).is_http());
        assert_eq!(Arch::from(22).firmware(), Firmware::Uboot);
        assert_eq!(Arch::from(999), Arch::Unknown(999));
        assert_eq!(Arch::from(999).name(), "unknown-999");
        assert_eq!(Arch::from_name("unknown-999"), Some(Arch::Unknown(999)));
        assert_eq!(Arch::from_name("x64-uefi"), Some(Arch::X64Uefi));
        assert_eq!(Arch::from_name("11"), Some(Arch::Arm64Uefi));
        assert_eq!(Arch::from_name("nope"), None);
    }

    #[test]
    fn slugs_are_unique() {
        let mut names: Vec<_> = TABLE.iter().map(|e| e.2).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TABLE.len());
    }
}
