; tests/guest/guest.asm: the integration tests' boot-sector guest.
;
; A 512-byte real-mode boot sector (assembled with nasm into a 1.44 MB floppy
; image by tests/guest/meson.build). Loaded by SeaBIOS at 0000:7C00. It:
;   1. initialises COM1 (0x3F8, 115200 8N1, FIFO on) and writes the line
;      "GUEST READY\r\n" once its keyboard handler is installed;
;   2. installs its own IRQ1 (INT 09h) handler: every byte the i8042 delivers
;      (port 0x60) is echoed to COM1 as two upper-case hex digits followed by
;      one space, e.g. pressing and releasing 'a' gives "1E 9E " (scan code
;      set 1: QEMU's i8042 translation is on under SeaBIOS). Bytes appear in
;      the order the guest received them, each exactly once. Nothing else is
;      ever written to COM1 after the READY line;
;   3. switches QEMU's vmmouse (VMware backdoor port 0x5658, present on the
;      pc machine with vmport=auto) to absolute mode, so QEMU has an active
;      absolute pointer and spice-server offers the CLIENT mouse mode (a
;      usb-tablet only becomes active once a guest USB driver polls it);
;   4. rewrites text row 0 of the VGA text buffer (B800:0000, 80 cells) with
;      an incrementing character after every interrupt (hlt wakes on each PIT
;      tick, ~18.2 Hz), so a SPICE client sees continuous display updates.
; The BIOS keeps its own timer handler (INT 08h, which sends the EOI).

        bits 16
        org 0x7C00

COM1    equ 0x3F8

start:
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7C00
        cld

        ; --- COM1: no interrupts, 115200 baud (divisor 1), 8N1, FIFO on
        mov dx, COM1 + 1
        xor al, al
        out dx, al              ; IER = 0
        mov dx, COM1 + 3
        mov al, 0x80
        out dx, al              ; LCR: DLAB = 1
        mov dx, COM1
        mov al, 1
        out dx, al              ; DLL = 1
        mov dx, COM1 + 1
        xor al, al
        out dx, al              ; DLM = 0
        mov dx, COM1 + 3
        mov al, 0x03
        out dx, al              ; LCR: 8N1, DLAB = 0
        mov dx, COM1 + 2
        mov al, 0xC7
        out dx, al              ; FCR: enable + clear FIFOs
        mov dx, COM1 + 4
        mov al, 0x03
        out dx, al              ; MCR: DTR, RTS

        ; --- drain anything already queued in the i8042 output buffer
        mov cx, 64
.drain: in al, 0x64
        test al, 1
        jz .drained
        in al, 0x60
        loop .drain
.drained:

        ; --- vmmouse: READ_ID (enables it), drain the version word, then
        ;     REQUEST_ABSOLUTE. Each call: eax = magic, ebx = arg, ecx = cmd.
        mov ebx, 0x45414552     ; VMMOUSE_READ_ID
        mov cl, 41              ; VMPORT_CMD_VMMOUSE_COMMAND
        call vmport
        mov ebx, 1              ; one word
        mov cl, 39              ; VMPORT_CMD_VMMOUSE_DATA
        call vmport
        mov ebx, 0x53424152     ; VMMOUSE_REQUEST_ABSOLUTE
        mov cl, 41
        call vmport

        ; --- hook INT 09h (IRQ1) in the real-mode IVT
        mov word [9*4], kbd_isr
        mov word [9*4+2], 0

        ; --- unmask IRQ0 (PIT) and IRQ1 (keyboard) on the master PIC
        in al, 0x21
        and al, 0xFC
        out 0x21, al

        mov si, ready_msg
.msg:   lodsb
        test al, al
        jz .msgdone
        call serial_putc
        jmp .msg
.msgdone:

        mov ax, 0xB800
        mov es, ax
        xor bx, bx
        sti

paint:  xor di, di
        mov cx, 80
        mov al, bl              ; character = counter
        mov ah, 0x1F            ; white on blue
        rep stosw
        inc bx
        hlt                     ; wake on the next interrupt (PIT tick or key)
        jmp paint

; IRQ1: read one byte from the i8042, echo it as "XX " on COM1, EOI.
kbd_isr:
        push ds
        push ax
        push bx
        push dx
        xor ax, ax
        mov ds, ax              ; hexdigits is addressed through ds
        in al, 0x60
        mov ah, al
        shr al, 4
        call hex_putc
        mov al, ah
        and al, 0x0F
        call hex_putc
        mov al, ' '
        call serial_putc
        mov al, 0x20
        out 0x20, al            ; EOI to the master PIC
        pop dx
        pop bx
        pop ax
        pop ds
        iret

; al = nibble (0..15) -> one hex digit on COM1. Clobbers al, bx, dx.
hex_putc:
        mov bx, hexdigits
        xlat
        ; fall through

; al = byte -> COM1 (waits, bounded, for the transmitter to be empty).
; Clobbers dx.
serial_putc:
        push cx
        push ax
        mov dx, COM1 + 5
        mov cx, 0xFFFF
.wait:  in al, dx
        test al, 0x20           ; LSR.THRE
        jnz .send
        loop .wait
.send:  pop ax
        mov dx, COM1
        out dx, al
        pop cx
        ret

; VMware backdoor call: ebx = argument, cl = command. Clobbers eax-edx.
vmport:
        mov eax, 0x564D5868     ; VMPORT_MAGIC
        movzx ecx, cl
        mov dx, 0x5658
        in eax, dx
        ret

hexdigits: db "0123456789ABCDEF"
ready_msg: db "GUEST READY", 13, 10, 0

        times 510 - ($ - $$) db 0
        dw 0xAA55
; pad to a 1.44 MB floppy (2880 sectors of 512 bytes)
        times 1474560 - ($ - $$) db 0
