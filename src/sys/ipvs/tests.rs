use super::*;

fn vip() -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: "198.18.0.10".parse().expect("addr"),
        port: 80,
    }
}

/// `ipvsadm -A -t 198.18.0.10:80 -s rr`: the attributes libipvs fills and
/// the kernel's policy in ip_vs_ctl.c expects (native-endian u16/u32,
/// 16-byte address, port in network order, NUL-terminated scheduler,
/// `{flags, mask}`), every attribute padded to 4 bytes.
#[test]
fn add_service_bytes_match_the_kernel_attribute_layout() {
    let got = encode_add_service(&VirtualServer::new(vip(), "rr"));
    #[rustfmt::skip]
    let want: Vec<u8> = [
        &[IPVS_CMD_NEW_SERVICE, IPVS_GENL_VERSION, 0, 0][..],  // genlmsghdr
        &[84, 0, 1, 0x80],                      // IPVS_CMD_ATTR_SERVICE (nested)
        &[6, 0, 1, 0], &2u16.to_ne_bytes(), &[0, 0],        // AF = AF_INET
        &[6, 0, 2, 0], &6u16.to_ne_bytes(), &[0, 0],        // PROTOCOL = TCP
        &[20, 0, 3, 0], &[198, 18, 0, 10], &[0; 12],        // ADDR (nf_inet_addr)
        &[6, 0, 4, 0], &[0, 80], &[0, 0],                   // PORT, network order
        &[7, 0, 6, 0], b"rr\0", &[0],                       // SCHED_NAME
        &[12, 0, 7, 0], &0u32.to_ne_bytes(), &u32::MAX.to_ne_bytes(), // FLAGS {flags, mask}
        &[8, 0, 8, 0], &0u32.to_ne_bytes(),                 // TIMEOUT
        &[8, 0, 9, 0], &u32::MAX.to_ne_bytes(),             // NETMASK
    ]
    .concat();
    assert_eq!(got, want);
}

/// `ipvsadm -a -t 198.18.0.10:80 -r 198.18.1.10:8080 -m -w 3`.
#[test]
fn add_destination_bytes_carry_the_service_key_and_the_real_server() {
    let dest = RealServer::masq("198.18.1.10".parse().expect("addr"), 8080, 3);
    let got = encode_add_destination(&vip(), &dest);
    #[rustfmt::skip]
    let want: Vec<u8> = [
        &[IPVS_CMD_NEW_DEST, IPVS_GENL_VERSION, 0, 0][..],
        &[48, 0, 1, 0x80],                                  // service key only
        &[6, 0, 1, 0], &2u16.to_ne_bytes(), &[0, 0],
        &[6, 0, 2, 0], &6u16.to_ne_bytes(), &[0, 0],
        &[20, 0, 3, 0], &[198, 18, 0, 10], &[0; 12],
        &[6, 0, 4, 0], &[0, 80], &[0, 0],
        &[72, 0, 2, 0x80],                                  // IPVS_CMD_ATTR_DEST
        &[6, 0, 11, 0], &2u16.to_ne_bytes(), &[0, 0],       // ADDR_FAMILY
        &[20, 0, 1, 0], &[198, 18, 1, 10], &[0; 12],        // ADDR
        &[6, 0, 2, 0], &8080u16.to_be_bytes(), &[0, 0],     // PORT
        &[8, 0, 3, 0], &0u32.to_ne_bytes(),                 // FWD_METHOD = masq
        &[8, 0, 4, 0], &3u32.to_ne_bytes(),                 // WEIGHT
        &[8, 0, 5, 0], &0u32.to_ne_bytes(),                 // U_THRESH
        &[8, 0, 6, 0], &0u32.to_ne_bytes(),                 // L_THRESH
    ]
    .concat();
    assert_eq!(got, want);
}

#[test]
fn ipv6_persistent_service_uses_a_prefix_length_netmask_and_round_trips() {
    let key = ServiceKey::Addr {
        protocol: Protocol::Udp,
        addr: "fd00:96::5".parse().expect("addr"),
        port: 53,
    };
    let svc = VirtualServer::new(key, "sh").persistent(10800);
    assert_eq!(svc.netmask, 128);
    // A listed service is the add request's attributes plus HASHED, which
    // the kernel sets and we never compare.
    let reply = encode_add_service(&VirtualServer {
        flags: svc.flags | FLAG_HASHED,
        ..svc.clone()
    });
    assert_eq!(decode_service(&reply).expect("decode"), svc);
}

#[test]
fn fwmark_service_round_trips() {
    let svc = VirtualServer::new(
        ServiceKey::Fwmark {
            ipv6: false,
            mark: 0x4000,
        },
        "rr",
    );
    assert_eq!(decode_service(&encode_add_service(&svc)).expect("decode"), svc);
}

#[test]
fn destination_round_trips_with_counters_absent() {
    let dest = RealServer::masq("fd00:1::10".parse().expect("addr"), 80, 1);
    let key = ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: "fd00:96::1".parse().expect("addr"),
        port: 80,
    };
    let got = decode_destination(&encode_add_destination(&key, &dest), true).expect("decode");
    assert_eq!(got.server, dest);
    assert_eq!((got.active_conns, got.inactive_conns), (0, 0));
}

#[test]
fn errors_name_the_operation_and_the_object() {
    let fake = FakeIpvs::new();
    let err = fake
        .delete_destination(&vip(), "198.18.1.10".parse().expect("addr"), 8080)
        .expect_err("no such service");
    assert_eq!(
        err.to_string(),
        format!(
            "delete real server TCP 198.18.0.10:80 -> 198.18.1.10:8080: {}",
            std::io::Error::from_raw_os_error(libc::ENOENT)
        )
    );
    assert_eq!(err.errno(), Some(libc::ENOENT));
}

#[test]
fn fake_behaves_like_the_kernel_table() {
    let fake = FakeIpvs::new();
    let svc = VirtualServer::new(vip(), "rr");
    fake.add_service(&svc).expect("add");
    assert_eq!(fake.add_service(&svc).expect_err("dup").errno(), Some(libc::EEXIST));
    let dest = RealServer::masq("198.18.1.10".parse().expect("addr"), 80, 1);
    fake.add_destination(&svc.key, &dest).expect("add dest");
    fake.update_destination(
        &svc.key,
        &RealServer {
            weight: 0,
            ..dest.clone()
        },
    )
    .expect("drain");
    assert_eq!(fake.destinations(&svc.key).expect("list")[0].server.weight, 0);
    fake.set_timeouts(&Timeouts {
        tcp: 900,
        tcp_fin: 0,
        udp: 300,
    })
    .expect("set");
    assert_eq!(
        fake.timeouts().expect("get"),
        Timeouts {
            tcp: 900,
            tcp_fin: 0,
            udp: 300
        }
    );
    fake.delete_service(&svc.key).expect("delete");
    assert!(fake.services().expect("list").is_empty());
    assert_eq!(
        fake.ops(),
        [
            "add-service TCP 198.18.0.10:80",
            "add-dest TCP 198.18.0.10:80 -> 198.18.1.10:80 w1",
            "edit-dest TCP 198.18.0.10:80 -> 198.18.1.10:80 w0",
            "set-timeouts 900 0 300",
            "delete-service TCP 198.18.0.10:80",
        ]
    );
}
