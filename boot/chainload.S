# BIOS boot sector stub: boots the disk whose GPT disk GUID is embedded at the
# end of the code area. imprint writes it over the front disk's boot code (the
# disk the firmware boots, keeping its partition table and signature), so the
# firmware ends up in the chosen disk's own boot code. When no disk carries that
# GUID (the disk was removed), it runs the front disk's own boot code instead,
# which imprint keeps at the LBA embedded before the GUID.
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
        # The drive the firmware booted us from, for the fallback.
        movb    %dl, (front - start + 0x600)
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
        # Not found: the front disk's own boot sector, by an extended (LBA) read.
        movb    (front - start + 0x600), %dl
        movw    $(dap - start + 0x600), %si
        movb    $0x42, %ah
        int     $0x13
        jc      give_up
        cmpw    $0xaa55, (0x7dfe)
        jne     give_up
        movb    (front - start + 0x600), %dl
        ljmp    $0, $0x7c00
give_up:
        # Let the firmware try its next boot device.
        int     $0x18
halt:
        hlt
        jmp     halt
drive:
        .byte   0
front:
        .byte   0
        .org    400
dap:
        .byte   16, 0
        .word   1
        .word   0x7c00, 0
rescue_lba:
        .quad   0
        .org    424
guid:
        .fill   16, 1, 0
