-- ibemail-milter, outbound: a message from an internal client to a
-- recipient whose domain publishes ibemail parameters is sealed.
--
-- OpenDKIM's miltertest plays the MTA (Postfix):
--
--   ibemail-milter run --config sender.toml &      # socket = "inet:127.0.0.1:8895"
--   miltertest -s encrypt.lua -D socket=inet:8895@127.0.0.1 [-D rcpt=bob@b.test]
--
-- The milter must find the recipient domain's _ibemailkey record in DNS
-- (milter/tests/miltertest.rs serves it with Knot). Exit status 0 when the
-- milter sealed the message; an error() (exit status 1) names what was
-- missing.
--
-- Keep the message small: miltertest (OpenDKIM 2.11) reads each reply from
-- the filter into a 1024-byte stack buffer without checking its length, so
-- the replacement body (the ciphertext, about 820 bytes for this message)
-- must stay under 1 KiB; and each mt.bodystring() piece is kept under 1000
-- bytes.

if rcpt == nil then
	rcpt = "bob@b.test"
end
-- The milter looks up DNS (with DNSSEC validation) before it answers.
mt.set_timeout(30)

local function check(what, result)
	if result ~= nil then
		error(what .. " failed: " .. tostring(result))
	end
end

local function continued(conn, what)
	local reply = mt.getreply(conn)
	if reply ~= SMFIR_CONTINUE then
		error(what .. ": expected SMFIR_CONTINUE, got " .. string.char(reply))
	end
end

local function test()
	if socket == nil then
		error("define the milter's socket: -D socket=inet:PORT@127.0.0.1")
	end
	local conn = mt.connect(socket, 10, 0.5)
	if conn == nil then
		error("cannot connect to the milter at " .. socket)
	end

	-- An internal client (127.0.0.1 is in the default internal_networks).
	-- Postfix names itself (macro v): a release that counts header
	-- fields as it shows them, so the milter edits them in place.
	mt.macro(conn, SMFIC_CONNECT, "v", "Postfix 3.9.1")
	check("mt.conninfo", mt.conninfo(conn, "localhost", "127.0.0.1"))
	continued(conn, "connect")
	-- Steps the milter switched off (SMFIP_NO*) are skipped, as Postfix does.
	if not mt.test_option(conn, SMFIP_NOHELO) then
		check("mt.helo", mt.helo(conn, "client.a.test"))
		continued(conn, "HELO")
	end

	-- Postfix sends the queue id with MAIL FROM (milter_mail_macros).
	mt.macro(conn, SMFIC_MAIL, "i", "MT1ENCRYPT")
	check("mt.mailfrom", mt.mailfrom(conn, "<alice@a.test>"))
	continued(conn, "MAIL FROM")
	check("mt.rcptto", mt.rcptto(conn, "<" .. rcpt .. ">"))
	continued(conn, "RCPT TO")
	if not mt.test_option(conn, SMFIP_NODATA) then
		check("mt.data", mt.data(conn))
		continued(conn, "DATA")
	end

	-- Values without their leading space: the milter negotiates
	-- SMFIP_HDR_LEADSPC and miltertest then adds the space itself.
	local headers = {
		{ "From", "Alice <alice@a.test>" },
		{ "To", "Bob <" .. rcpt .. ">" },
		{ "Subject", "the merger" },
		{ "Message-ID", "<mt1@a.test>" },
		{ "Date", "Mon, 23 Nov 2026 09:00:00 +0000" },
		{ "Bcc", "Carol <carol@b.test>" },
		{ "X-Mailer", "Secret Client 1.0" },
	}
	for _, h in ipairs(headers) do
		check("mt.header(" .. h[1] .. ")", mt.header(conn, h[1], h[2]))
		continued(conn, "header " .. h[1])
	end
	if not mt.test_option(conn, SMFIP_NOEOH) then
		check("mt.eoh", mt.eoh(conn))
		continued(conn, "end of header")
	end

	local body = "The merger closes on Friday.\r\n.leading dot\r\n\r\nBye\r\n"
	check("mt.bodystring", mt.bodystring(conn, body))
	continued(conn, "body")

	check("mt.eom", mt.eom(conn))
	continued(conn, "end of message")

	-- The body is replaced by the S/MIME (CMS) ciphertext.
	if not mt.eom_check(conn, MT_BODYCHANGE) then
		error("the body was not replaced: the message was not encrypted")
	end
	if mt.eom_check(conn, MT_BODYCHANGE, body) then
		error("the body was replaced by the plaintext")
	end
	-- The Subject is obscured: deleted, and [...] added (never changed in
	-- place: Postfix's milter_header_checks could ignore the change and
	-- leave the real one) ...
	if mt.eom_check(conn, MT_HDRCHANGE, "Subject", " [...]") then
		error("the Subject was changed in place")
	end
	if not (mt.eom_check(conn, MT_HDRDELETE, "Subject")
	   and mt.eom_check(conn, MT_HDRADD, "Subject", " [...]")) then
		error("the Subject was not replaced by [...]")
	end
	-- ... the addressing fields stay outside: those before the Subject
	-- where they were (neither deleted nor added again), the others
	-- deleted and added back ...
	for _, name in ipairs({ "From", "To" }) do
		if mt.eom_check(conn, MT_HDRDELETE, name) or mt.eom_check(conn, MT_HDRCHANGE, name)
		   or mt.eom_check(conn, MT_HDRADD, name) then
			error("the " .. name .. " field was not left in place")
		end
	end
	for _, name in ipairs({ "Message-ID", "Date" }) do
		if not (mt.eom_check(conn, MT_HDRDELETE, name) and mt.eom_check(conn, MT_HDRADD, name)) then
			error("the " .. name .. " field is not outside")
		end
	end
	-- ... the fields that travel only inside go, and come back nowhere ...
	for _, name in ipairs({ "Bcc", "X-Mailer" }) do
		if not mt.eom_check(conn, MT_HDRDELETE, name) then
			error("the " .. name .. " field was not removed")
		end
		-- (A deletion is a change to nothing for miltertest: not asked.)
		if mt.eom_check(conn, MT_HDRADD, name) or mt.eom_check(conn, MT_HDRINSERT, name) then
			error("the " .. name .. " field is outside the encryption")
		end
	end
	-- ... and the S/MIME fields of the sealed message are added.
	local content_type = mt.getheader(conn, "Content-Type", 0)
	if content_type == nil then
		error("no Content-Type field added")
	end
	if not string.find(content_type, "application/pkcs7-mime", 1, true)
	   or not string.find(content_type, "smime-type=authEnveloped-data", 1, true) then
		error("unexpected Content-Type: " .. content_type)
	end
	if not mt.eom_check(conn, MT_HDRADD, "MIME-Version", " 1.0") then
		error("no MIME-Version field added to the sealed message")
	end
	-- The outer Subject does not reveal the original.
	if mt.eom_check(conn, MT_HDRCHANGE, "Subject", " the merger")
	   or mt.eom_check(conn, MT_HDRADD, "Subject", " the merger") then
		error("the outer Subject leaks the original")
	end
	-- Not quarantined, the recipient kept.
	if mt.eom_check(conn, MT_QUARANTINE) then
		error("the message was quarantined")
	end
	if mt.eom_check(conn, MT_RCPTDELETE, "<" .. rcpt .. ">") then
		error("the recipient was removed")
	end

	mt.disconnect(conn)
	mt.echo("encrypt: sealed for " .. rcpt .. ", Content-Type:" .. content_type)
end

-- miltertest (2.11) does not print a script's error message: print it
-- here, then fail.
local ok, err = pcall(test)
if not ok then
	io.stderr:write("FAILED: " .. tostring(err) .. "\n")
	error(err, 0)
end
