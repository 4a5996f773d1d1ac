-- PL/SQL package customer_pkg
create or replace package customer_pkg as end;
