# BIOS boot sector stub: boots the disk whose GPT disk GUID is embedded at the
# end of the code area. imprint writes it over an old disk's boot code during a
# BIOS upgrade (keeping the partition table and signature), so the firmware,
# which boots the old disk first, ends up in the new disk's own boot code.
#
# Assemble: as --32 -o chainload.o chainload.S && objcopy -O binary -j .text chainload.o chainload.bin
        .code16
        .text
        .globl start
start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        sti
        cld
        # Move out of the way: the chosen disk's boot sector goes to 0x7c00.
        movw    $0x7c00, %si
        movw    $0x0600, %di
        movw    $256, %cx
        rep movsw
        ljmp    $0, $(relocated - start + 0x600)
relocated:
        movb    $0x81, %dl
next_drive:
        movb    %dl, (drive - start + 0x600)
        # LBA 1 (cylinder 0, head 0, sector 2): the primary GPT header.
        movw    $0x0201, %ax
        movw    $0x7e00, %bx
        movw    $0x0002, %cx
        xorb    %dh, %dh
        int     $0x13
        jc      try_next
        movw    $(0x7e00 + 56), %si
        movw    $(guid - start + 0x600), %di
        movw    $8, %cx
        repe cmpsw
        jne     try_next
        # The disk: load its boot sector and jump to it with DL set to it.
        movb    (drive - start + 0x600), %dl
        movw    $0x0201, %ax
        movw    $0x7c00, %bx
        movw    $0x0001, %cx
        xorb    %dh, %dh
        int     $0x13
        jc      try_next
        cmpw    $0xaa55, (0x7dfe)
        jne     try_next
        movb    (drive - start + 0x600), %dl
        ljmp    $0, $0x7c00
try_next:
        movb    (drive - start + 0x600), %dl
        incb    %dl
        cmpb    $0x90, %dl
        jb      next_drive
        # Not found: let the firmware try its next boot device.
        int     $0x18
halt:
        hlt
        jmp     halt
drive:
        .byte   0
        .org    424
guid:
        .fill   16, 1, 0
