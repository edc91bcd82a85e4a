; pixie end-to-end test NBP for BIOS PXE clients.
;
; Build:  nasm -f bin -o pixie-bios.0 bios.asm
;
; A PXE ROM loads this file at 0000:7C00 and jumps to it with ES:BX -> PXENV+
; and a far pointer to !PXE at [SS:SP+4].  It writes, straight to COM1 (so the
; lines arrive whole and in order, whatever the firmware console does):
;
;   PIXIE-NBP-OK
;   PIXIE-NBP-INFO dhcpack yiaddr=A.B.C.D siaddr=A.B.C.D chaddr=MAC file=NAME
;   PIXIE-NBP-INFO reply yiaddr=A.B.C.D siaddr=A.B.C.D chaddr=MAC file=NAME
;
; read with PXENV_GET_CACHED_INFO (packet types 2 = DHCPACK and 3 = the cached
; proxyDHCP/boot-server reply).  file= is the BOOTP file field, or DHCP option
; 67 when that field is empty.  Then it halts for good.

bits 16
cpu 386
org 0x7C00

COM1            equ 0x3F8
PXENV_GET_CACHED_INFO equ 0x0071

start:
        jmp     0x0000:main             ; make CS = 0 whatever the ROM used

main:
        cli
        mov     [cs:pxenv_ptr], bx      ; PXENV+ (ES:BX)
        mov     [cs:pxenv_ptr + 2], es
        mov     bp, sp
        mov     ax, [ss:bp + 4]         ; !PXE (far pointer on the stack)
        mov     [cs:bang_ptr], ax
        mov     ax, [ss:bp + 6]
        mov     [cs:bang_ptr + 2], ax
        xor     ax, ax
        mov     ds, ax
        sti
        cld

        mov     si, s_ok
        call    puts

        ; Choose the API: !PXE if its signature checks out, else PXENV+.
        les     di, [bang_ptr]
        cmp     dword [es:di], '!PXE'
        jne     .try_pxenv
        mov     ax, [es:di + 0x10]      ; EntryPointSP
        mov     [entry], ax
        mov     ax, [es:di + 0x12]
        mov     [entry + 2], ax
        mov     byte [use_bang], 1
        jmp     .have_api
.try_pxenv:
        les     di, [pxenv_ptr]
        cmp     dword [es:di], 'PXEN'
        jne     .no_api
        cmp     word [es:di + 4], 'V+'
        jne     .no_api
        mov     ax, [es:di + 0x0A]      ; RMEntry
        mov     [entry], ax
        mov     ax, [es:di + 0x0C]
        mov     [entry + 2], ax
        mov     byte [use_bang], 0
.have_api:
        mov     al, 2
        mov     si, s_ack
        call    report
        mov     al, 3
        mov     si, s_reply
        call    report
        jmp     halt

.no_api:
        mov     si, s_noapi
        call    puts

halt:
        cli
.forever:
        hlt
        jmp     .forever

; report: AL = packet type, SI = label.  Prints one PIXIE-NBP-INFO line.
report:
        push    si
        mov     si, s_info
        call    puts
        pop     si
        call    puts

        ; t_PXENV_GET_CACHED_INFO, asking for the stack's own buffer.
        xor     ah, ah
        mov     word [ci_status], 0
        mov     [ci_type], ax
        mov     word [ci_size], 0
        mov     dword [ci_buffer], 0
        mov     word [ci_limit], 0
        mov     bx, PXENV_GET_CACHED_INFO
        mov     di, cached_info
        call    pxe_call
        or      ax, ax
        jnz     .fail
        cmp     word [ci_status], 0
        jne     .fail
        cmp     dword [ci_buffer], 0
        je      .fail

        mov     si, s_yiaddr
        call    puts
        mov     di, 16
        call    put_ip
        mov     si, s_siaddr
        call    puts
        mov     di, 20
        call    put_ip
        mov     si, s_chaddr
        call    puts
        call    put_mac
        mov     si, s_file
        call    puts
        call    put_file
        jmp     .eol
.fail:
        mov     si, s_error
        call    puts
.eol:
        mov     si, s_crlf
        jmp     puts

; pxe_call: BX = opcode, DS:DI = parameter block.  Returns AX.
pxe_call:
        push    ds
        push    es
        push    bp
        cmp     byte [use_bang], 1
        jne     .pxenv
        push    ds                      ; !PXE: push segment, offset, opcode
        push    di
        push    bx
        call    far [entry]
        add     sp, 6
        jmp     .done
.pxenv:
        push    ds                      ; PXENV+: ES:DI = params, BX = opcode
        pop     es
        call    far [entry]
.done:
        pop     bp
        pop     es
        pop     ds
        ret

; put_ip: DI = offset of 4 bytes inside the cached packet.
put_ip:
        les     bx, [ci_buffer]
        add     bx, di
        mov     cx, 4
.next:
        mov     al, [es:bx]
        call    put_dec
        inc     bx
        dec     cx
        jz      .done
        mov     al, '.'
        call    putc
        jmp     .next
.done:
        ret

; put_mac: chaddr (offset 28), 6 bytes as aa:bb:cc:dd:ee:ff
put_mac:
        les     bx, [ci_buffer]
        add     bx, 28
        mov     cx, 6
.next:
        mov     al, [es:bx]
        call    put_hex
        inc     bx
        dec     cx
        jz      .done
        mov     al, ':'
        call    putc
        jmp     .next
.done:
        ret

; put_file: the BOOTP file field (offset 108, 128 bytes) if set, else option 67.
put_file:
        les     bx, [ci_buffer]
        cmp     byte [es:bx + 108], 0
        je      .options
        add     bx, 108
        mov     cx, 128
.fchar:
        mov     al, [es:bx]
        or      al, al
        jz      .done
        call    putc
        inc     bx
        loop    .fchar
        ret
.options:
        mov     dx, bx
        add     dx, [ci_size]           ; DX = end of packet
        cmp     word [ci_size], 244
        jb      .none
        cmp     dword [es:bx + 236], 0x63538263   ; magic cookie 99.130.83.99
        jne     .none
        add     bx, 240
.opt:
        cmp     bx, dx
        jae     .none
        mov     al, [es:bx]
        cmp     al, 255
        je      .none
        or      al, al
        jnz     .real
        inc     bx                      ; pad
        jmp     .opt
.real:
        mov     cl, [es:bx + 1]
        xor     ch, ch
        cmp     al, 67
        je      .found
        add     bx, cx
        add     bx, 2
        jmp     .opt
.found:
        add     bx, 2
        jcxz    .done
.ochar:
        mov     al, [es:bx]
        or      al, al
        jz      .done
        call    putc
        inc     bx
        loop    .ochar
.done:
        ret
.none:
        mov     al, '-'
        jmp     putc

; put_dec: AL as 0..255 in decimal.
put_dec:
        push    cx
        xor     ah, ah
        mov     cl, 100
        div     cl                      ; AL = hundreds, AH = rest
        mov     ch, 0                   ; CH = 1 once a digit was printed
        or      al, al
        jz      .tens
        add     al, '0'
        call    putc
        mov     ch, 1
.tens:
        mov     al, ah
        xor     ah, ah
        mov     cl, 10
        div     cl
        or      ch, al
        jz      .ones
        add     al, '0'
        call    putc
.ones:
        mov     al, ah
        add     al, '0'
        call    putc
        pop     cx
        ret

; put_hex: AL as two lower-case hex digits.
put_hex:
        push    ax
        shr     al, 4
        call    .nibble
        pop     ax
        and     al, 0x0F
.nibble:
        add     al, '0'
        cmp     al, '9'
        jbe     putc
        add     al, 'a' - '9' - 1
        ; fall through

; putc: AL to COM1, waiting (bounded) for the transmit holding register.
putc:
        push    ax
        push    cx
        push    dx
        mov     ah, al
        mov     dx, COM1 + 5            ; LSR
        mov     cx, 0xFFFF
.wait:
        in      al, dx
        test    al, 0x20                ; THR empty
        jnz     .send
        loop    .wait
.send:
        mov     al, ah
        mov     dx, COM1
        out     dx, al
        pop     dx
        pop     cx
        pop     ax
        ret

; puts: DS:SI, NUL-terminated.
puts:
        push    ax
.next:
        lodsb
        or      al, al
        jz      .done
        call    putc
        jmp     .next
.done:
        pop     ax
        ret

s_ok            db 13, 10, "PIXIE-NBP-OK", 13, 10, 0
s_info          db "PIXIE-NBP-INFO ", 0
s_ack           db "dhcpack", 0
s_reply         db "reply", 0
s_yiaddr        db " yiaddr=", 0
s_siaddr        db " siaddr=", 0
s_chaddr        db " chaddr=", 0
s_file          db " file=", 0
s_error         db " unavailable", 0
s_noapi         db "PIXIE-NBP-INFO no PXE API found", 13, 10, 0
s_crlf          db 13, 10, 0

align 4
pxenv_ptr       dd 0
bang_ptr        dd 0
entry           dd 0
use_bang        db 0

align 2
cached_info:                            ; t_PXENV_GET_CACHED_INFO
ci_status       dw 0
ci_type         dw 0
ci_size         dw 0
ci_buffer       dd 0                    ; offset, segment
ci_limit        dw 0
